"""The `lstm-pipeline` command (its console script's entry) and `python -m pipeline`."""

import signal


def console() -> None:
    """A signal sent while the command's modules import (0.1-0.2 s) is held until they are in,
    then stops the command as one sent later does: its line and exit code, where it was a
    traceback (Ctrl+C) or a silent -15 (SIGTERM)."""
    held: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(signum, lambda number, _: held.append(number))
    from pipeline.cli import console as run

    run(held)


if __name__ == "__main__":
    console()
