"""Ray Tune sweeps over the train stage: search spaces, cluster connection, best params."""
