"""The bundled demo checkpoint: a ~5M-parameter Phi-3-architecture model trained on CPython stdlib source.

`phi3-edge export --model demo ...` resolves to CHECKPOINT_DIR. It is rebuilt reproducibly by
`python tools/train_demo.py --out phi3_edge/demo/checkpoint`; corpus.json and training.json in the folder say
what it was trained on and how.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
