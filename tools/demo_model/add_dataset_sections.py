"""Re-save a demo `.nemo` with the dataset sections NeMo's `transcribe()` needs, without retraining.

    python tools/demo_model/add_dataset_sections.py src/nemo_stt/assets/demo-en-fastconformer.nemo

The file is rewritten in place only when its weights come back bit-identical from the new file.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import add_dataset_sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    args = parser.parse_args()
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(args.model), map_location="cpu")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    add_dataset_sections(model)
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / args.model.name
        model.save_to(str(out))
        after = ASRModel.restore_from(str(out), map_location="cpu").state_dict()
        if before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
            sys.exit("the weights changed: the file is left as it was")
        out.replace(args.model)
    print(f"rewrote {args.model}: {len(before)} tensors, bit-identical")


if __name__ == "__main__":
    main()
