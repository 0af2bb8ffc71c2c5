"""Trainer service: DeepSpeed ZeRO pretraining over streamed shards, publishing checkpoints."""
