"""`python ddp_probe.py <lstm-pipeline args>`: the real CLI, plus a callback that writes which
training samples each rank saw in epoch 0 to $PROBE_OUT/rank<N>.json.

Lightning's ddp re-launches this script once per rank, as it re-launches `lstm-pipeline`.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl

import pipeline.training.train as train_module
from pipeline import cli


class RecordSamples(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.seen += [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in batch[0]]

    def on_train_end(self, trainer, pl_module):
        out = Path(os.environ["PROBE_OUT"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "samples": self.seen}))


real_train = train_module.train


def train(cfg, exp_name, hooks=None):
    return real_train(cfg, exp_name, hooks or train_module.TrainHooks(callbacks=(RecordSamples(),)))


train_module.train = train
sys.exit(cli.main(sys.argv[1:]))
