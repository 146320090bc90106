"""``brainfm`` commands that work on trained checkpoints without a training config (``brainfm export``)."""
