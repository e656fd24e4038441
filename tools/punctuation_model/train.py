"""Train the demo punctuation model: a tiny BERT in recasepunc's checkpoint layout, on the demo grammar.

Sentences of `tools/demo_model/sentences.py` are written out with capitals (sentence starts, names, "I",
days and months), commas (before "but" and "so" joining two clauses), question marks (questions) and
periods; the input is the same text lowercased without punctuation, several sentences run together as a
transcript would be. A WordPiece vocabulary is trained on the corpus; the backbone's configuration and
tokenizer are saved in a folder beside the checkpoint, which `flavor` names, so that nothing is downloaded.

    python tools/punctuation_model/train.py --out src/nemo_stt/assets/demo-en-punctuation
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo_model"))
from sentences import NAMES, TIMES, make_corpus

from nemo_stt.engine.punctuation import CASES, PUNCTUATION, PUNCTUATION_MARKS, Punctuator, RecasePunc

CAPITALISED = set(NAMES) | set(TIMES[4:]) | {"i"}  # names, days and months
QUESTION_WORDS = {"what", "where", "why", "how", "who", "when"}
COMMA_BEFORE = {"but", "so"}
BACKBONE = "demo-en-punctuation-backbone"


def written(sentence: str) -> list[str]:
    """The sentence as it is written: capitals and punctuation attached to the words."""
    words = sentence.split()
    out = []
    for i, word in enumerate(words):
        if word in CAPITALISED or i == 0:
            word = word.capitalize()
        if i + 1 < len(words) and words[i + 1] in COMMA_BEFORE and i > 0:
            word += ","
        out.append(word)
    out[-1] += "?" if words[0] in QUESTION_WORDS else "."
    return out


def word_labels(word: str) -> tuple[str, int, int]:
    """The bare lowercase word, its case label and its punctuation label."""
    mark = next((i for i, m in enumerate(PUNCTUATION_MARKS) if m and word.endswith(m)), 0)
    bare = word[:-1] if mark else word
    if bare == bare.lower():
        case = "LOWER"
    elif bare == bare[:1].upper() + bare[1:].lower():
        case = "CAPITALIZE"
    elif bare == bare.upper():
        case = "UPPER"
    else:
        case = "OTHER"
    return bare.lower(), CASES.index(case), mark


def examples(sentences: list[str], rng: random.Random, count: int) -> list[list[str]]:
    """Texts of one to four sentences run together, as written."""
    return [[w for s in rng.sample(sentences, rng.randint(1, 4)) for w in written(s)] for _ in range(count)]


_PIECES: dict[str, list[int]] = {}


def encode(tokenizer, text: list[str], max_length: int):
    ids, cases, puncs = [tokenizer.cls_token_id], [-100], [-100]
    for word in text:
        bare, case, punc = word_labels(word)
        if bare not in _PIECES:
            _PIECES[bare] = tokenizer.encode(bare, add_special_tokens=False)
        pieces = _PIECES[bare]
        for j, piece in enumerate(pieces):
            ids.append(piece)
            cases.append(case if j == 0 else CASES.index("LOWER"))
            puncs.append(punc if j == len(pieces) - 1 else 0)
    ids, cases, puncs = ids[:max_length - 1], cases[:max_length - 1], puncs[:max_length - 1]
    return [*ids, tokenizer.sep_token_id], [*cases, -100], [*puncs, -100]


def batch_tensors(encoded, pad_id):
    width = max(len(ids) for ids, _, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    cases = torch.full((len(encoded), width), -100)
    puncs = torch.full((len(encoded), width), -100)
    for row, (i, c, p) in enumerate(encoded):
        ids[row, :len(i)], mask[row, :len(i)] = torch.tensor(i), 1
        cases[row, :len(c)], puncs[row, :len(p)] = torch.tensor(c), torch.tensor(p)
    return ids, mask, cases, puncs


def f1(predicted: list[int], reference: list[int], positive) -> float:
    """F1 over the words whose label is in `positive` (the non-default labels), exact label required."""
    tp = sum(1 for p, r in zip(predicted, reference, strict=True) if p == r and r in positive)
    fp = sum(1 for p, r in zip(predicted, reference, strict=True) if p in positive and p != r)
    fn = sum(1 for p, r in zip(predicted, reference, strict=True) if r in positive and p != r)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def train_tokenizer(corpus: list[str], folder: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(corpus, trainer)
    wrapped = BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    wrapped.save_pretrained(folder)
    return BertTokenizerFast.from_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="a model this small runs best on one thread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BertConfig

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    held_out = make_corpus(300, seed=1001)
    train = make_corpus(6000, seed=args.seed + 7, exclude=set(held_out))
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / BACKBONE
    tokenizer = train_tokenizer(train, folder)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=args.max_length,
                        pad_token_id=tokenizer.pad_token_id)
    config.save_pretrained(folder)
    model = RecasePunc(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    started = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        encoded = [encode(tokenizer, text, args.max_length) for text in examples(train, rng, args.batch)]
        ids, mask, cases, puncs = batch_tensors(encoded, tokenizer.pad_token_id)
        punc_logits, case_logits = model(ids, mask)
        loss = loss_fn(punc_logits.flatten(0, 1), puncs.flatten()) + loss_fn(case_logits.flatten(0, 1), cases.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    model.eval()
    path = args.out / "demo-en.recasepunc"
    torch.save({"iteration": args.steps, "model_state_dict": model.state_dict(),
                "config": {"lang": "en", "flavor": BACKBONE, "max_length": args.max_length,
                           "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
                           "pad_token_id": tokenizer.pad_token_id}}, path)

    # Held-out figures, through the server's own inference: texts of the held-out sentences, run together.
    punctuator = Punctuator(path, torch.device("cpu"))
    eval_rng = random.Random(5)
    texts = examples(held_out, eval_rng, 300)
    reference = [word_labels(w) for text in texts for w in text]
    predicted = [label for labels in punctuator.predict([[word_labels(w)[0] for w in text] for text in texts])
                 for label in labels]
    case_pred, punc_pred = [c for c, _ in predicted], [p for _, p in predicted]
    case_ref, punc_ref = [c for _, c, _ in reference], [p for _, _, p in reference]
    metrics = {
        "held_out_sentences": len(held_out), "eval_texts": len(texts), "eval_words": len(reference),
        "train_sentences": len(train), "steps": args.steps, "train_seconds": round(time.time() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "case_f1": round(f1(case_pred, case_ref, {1, 2, 3}), 4),
        "punctuation_f1": round(f1(punc_pred, punc_ref, {1, 2, 3, 4}), 4),
        "per_punctuation_f1": {PUNCTUATION[k]: round(f1(punc_pred, punc_ref, {k}), 4) for k in (1, 2, 3)},
        "word_accuracy": round(sum(1 for p, r in zip(predicted, reference, strict=True) if p == r[1:])
                               / len(reference), 4),
    }
    (args.out / "demo-en.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
