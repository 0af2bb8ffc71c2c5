"""Shards service: turns tiles + captions + indicators into webdataset tar shards on object storage, and reads
them back (the streaming pipeline the trainer and eval workers use)."""
