"""An example user reward for `--mode=finetune`: name it in the config as

    --config.finetune.user_reward=launch/example_reward.py:stepwise_motion
    --config.finetune.user_reward_weight=0.5

A user reward has the signature of the built-in ones (jaxcomposer/finetune/rewards.py):
`reward(notes, key, context) -> float`, with `notes` the decoded notes of one sampled piece
(jaxcomposer.music.notes.Notes, times in quarter-note beats), `key` a pretty_midi key number (0-11
major, 12-23 minor; requested or estimated) and `context` a rewards.RewardContext. It must be a
pure function of its arguments (fine-tuning resumes bit for bit only if it is) and should return
a value in [0, 1] so that its weight reads like the built-in ones'.
"""

from __future__ import annotations

import numpy as np

from jaxcomposer.finetune import rewards
from jaxcomposer.music.notes import Notes


def stepwise_motion(notes: Notes, key: int, context: rewards.RewardContext) -> float:
    """Share of the melody's moves (top voice, repeated notes excluded) that are steps of one
    or two semitones: conjunct motion, which most real melodies favour. 0 with no moves."""
    _, top = rewards.melody(notes, context.steps_per_beat)
    moves = np.diff(top)
    moves = moves[moves != 0]
    if len(moves) == 0:
        return 0.0
    return float(np.mean(np.abs(moves) <= rewards.STEP))
