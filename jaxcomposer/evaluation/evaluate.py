"""`--mode=evaluate`: likelihood on held-out music; with --samples, musical statistics vs real.

Per piece (keyed by file name) and overall: tokens, nll_nats, nats_per_token, bits_per_token,
perplexity, accuracy, beats + nats_per_beat, and for the `frame` tokenizer frames +
nats_per_frame = (sum of the NLLs of the tokens inside frames, FRAME_END included, i.e. every
target but EOS) / number of frames, the unit of the classic piano-roll benchmarks; and
seconds + nats_per_second = NLL / seconds of music (first onset to last note end through the
file's tempo map, as read, before tokenization), which compares models whatever their
tokenizer on the same pieces (absent for datasets prepared before it was recorded).
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import logging
from tqdm import tqdm

from jaxcomposer import atomic, conditioning, workdir_lib
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.data.ingest import find_midi_files
from jaxcomposer.errors import UsageError
from jaxcomposer.evaluation import compare, likelihood, musicstats
from jaxcomposer.model import StepFunction
from jaxcomposer.tokenizers import EOS, Tokenizer, get_tokenizer


def piece_metrics(
    tokenizer: Tokenizer,
    tokens: np.ndarray,
    nll: np.ndarray,
    correct: np.ndarray,
    seconds: float | None = None,
) -> dict:
    """Sums for one piece; `nll[i]` is the NLL of tokens[i + 1]; `seconds` of music if known."""
    decoded = tokenizer.decode(tokens)
    out = {
        "tokens": int(nll.size),
        "nll_nats": float(nll.sum()),
        "correct": int(correct.sum()),
        "beats": float(decoded.beats),
    }
    if tokenizer.name == "frame":
        in_frames = tokens[1:] != EOS
        out["frames"] = int(decoded.frames)
        out["frame_nll_nats"] = float(nll[in_frames].sum())
    if seconds is not None:
        out["seconds"] = float(seconds)
    return out


def finish(sums: dict) -> dict:
    """Adds the ratios to summed counts (a piece's or the whole set's)."""
    out = dict(sums)
    n = max(sums["tokens"], 1)
    out["nats_per_token"] = sums["nll_nats"] / n
    out["bits_per_token"] = out["nats_per_token"] / math.log(2)
    out["perplexity"] = math.exp(out["nats_per_token"])
    out["accuracy"] = sums["correct"] / n
    if sums.get("beats", 0) > 0:
        out["nats_per_beat"] = sums["nll_nats"] / sums["beats"]
    if sums.get("seconds", 0) > 0:
        out["nats_per_second"] = sums["nll_nats"] / sums["seconds"]
    if "frames" in sums and sums["frames"] > 0:
        out["nats_per_frame"] = sums["frame_nll_nats"] / sums["frames"]
    return out


def total(per_piece: dict[str, dict]) -> dict:
    sums: dict = {"pieces": len(per_piece)}
    for metrics in per_piece.values():
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0) + value
    return finish(sums)


def score_pieces(
    workdir: str,
    names: list[str],
    pieces: list[np.ndarray],
    *,
    progress: bool = True,
    labels: list[dict[str, np.ndarray]] | None = None,
    seconds: dict[str, float] | None = None,
    checkpoint: str = "best",
) -> dict:
    """Loads `checkpoint` ('best', 'latest', a step, 'finetuned[:STEP]') and scores pieces;
    returns {'pieces': {...}, 'overall': {...}}.
    `labels[i]` ({'keys', 'styles'}: int per token) feed a conditioned model's [X; M];
    `seconds` (by piece name) adds nats_per_second where every piece has it."""
    restored = workdir_lib.restore_for_inference(workdir, checkpoint)
    config, tokenizer, variables = restored.config, restored.tokenizer, restored.variables
    step_fn = StepFunction(restored.model)
    bar = tqdm(total=len(pieces), desc="evaluate", unit="piece", disable=not progress)
    kwargs = dict(
        window=config.train.seq_len, batch_size=config.train.batch_size, progress=bar.update
    )
    if config.train.loss_on_last_only:  # the original's model predicts from a fixed window
        scored = likelihood.sliding_window_nll(variables, step_fn, pieces, **kwargs)
    else:
        grammar = tokenizer.grammar if config.train.grammar_mask_loss else None
        conds = _conds(restored.spec, pieces, labels)
        scored = likelihood.piece_token_nll(
            variables, step_fn, pieces, grammar=grammar, conds=conds, **kwargs
        )
    bar.close()
    seconds = seconds if seconds and all(n in seconds for n in names) else {}
    per_piece = {
        name: piece_metrics(tokenizer, tokens, nll, correct, seconds.get(name))
        for name, tokens, (nll, correct) in zip(names, pieces, scored, strict=True)
    }
    return {
        "checkpoint_step": restored.step,
        "tokenizer": tokenizer.name,
        "overall": total(per_piece),
        "pieces": {name: finish(m) for name, m in per_piece.items()},
    }


def _conds(spec, pieces, labels) -> list[np.ndarray] | None:
    if not spec.dim:
        return None
    if not labels or any("keys" not in lab for lab in labels):
        raise ValueError(
            "the model is key-conditioned but the pieces have no key labels (a dataset prepared "
            "before labels existed): run --mode=prepare again"
        )
    out = []
    for piece, lab in zip(pieces, labels, strict=True):
        styles = lab.get("styles", np.full(piece.size, -1))
        out.append(conditioning.vector(spec, lab["keys"][:-1], styles[: piece.size - 1]))
    return out


def format_table(result: dict, limit: int = 12) -> str:
    cols = (
        "tokens",
        "nats_per_token",
        "bits_per_token",
        "perplexity",
        "accuracy",
        "nats_per_beat",
        "nats_per_second",
        "nats_per_frame",
    )
    present = [c for c in cols if c in result["overall"]]
    width = max([len(n) for n in list(result["pieces"])[:limit]] + [7])
    lines = [f"{'piece':<{width}} " + " ".join(f"{c:>14}" for c in present)]
    rows = list(result["pieces"].items())[:limit] + [("OVERALL", result["overall"])]
    for name, m in rows:
        lines.append(f"{name:<{width}} " + " ".join(_fmt(m.get(c)) for c in present))
    if len(result["pieces"]) > limit:
        lines.insert(-1, f"... {len(result['pieces']) - limit} more pieces in the JSON")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return f"{'-':>14}"
    return f"{value:>14d}" if isinstance(value, int) else f"{value:>14.4f}"


def evaluate(
    workdir: str,
    *,
    eval_dir: str | None = None,
    progress: bool = True,
    checkpoint: str = "best",
) -> dict:
    """Scores the validation split, or every readable MIDI file of `eval_dir`, with the model of
    `checkpoint` ('best', 'latest', a step, 'finetuned[:STEP]'). Writes
    WORKDIR/evaluation_<valid | dir_FOLDERNAME>[_CHECKPOINT].json, so a folder named 'valid'
    or another checkpoint never overwrites the validation split's report."""
    skipped: list[dict] = []
    if eval_dir:
        config = workdir_lib.load_config(workdir)
        split, skipped, stats = dataset.encode_folder_with_stats(
            config, eval_dir, progress=progress
        )
        label = "dir_" + os.path.basename(os.path.normpath(eval_dir))
    else:
        split, stats = dataset.load_split(workdir, "valid"), dataset.file_stats(workdir)
        label = "valid"
    seconds = {name: s["seconds"] for name, s in stats.items() if "seconds" in s}
    pieces = [split.tokens[a:b] for a, b in zip(split.offsets[:-1], split.offsets[1:], strict=True)]
    if not pieces and eval_dir:
        raise UsageError(f"--eval_dir {eval_dir}: {_nothing_usable(skipped)}")
    if not pieces:
        raise dataset.DatasetError(f"{workdir}: the validation split holds no pieces")
    if skipped:
        logging.warning("--eval_dir %s: %d of %d files skipped (listed below and in the JSON)",
                        eval_dir, len(skipped), len(skipped) + len(pieces))  # fmt: skip
    in_training = training_copies(workdir, list(split.names), pieces) if eval_dir else []
    if in_training:
        logging.warning(
            "--eval_dir %s: %d of %d pieces are token for token training pieces, so their "
            "figures are not held out: %s", eval_dir, len(in_training), len(pieces),
            ", ".join(in_training[:5]) + (" ..." if len(in_training) > 5 else ""),
        )  # fmt: skip
    labels = [
        {name: track[a:b] for name, track in split.labels.items()}
        for a, b in zip(split.offsets[:-1], split.offsets[1:], strict=True)
    ]
    result = score_pieces(
        workdir,
        list(split.names),
        pieces,
        progress=progress,
        labels=labels,
        seconds=seconds,
        checkpoint=checkpoint,
    )
    result.update(data=eval_dir or "valid split", skipped=skipped, checkpoint=str(checkpoint))
    if str(checkpoint) != "best":
        label += "_" + str(checkpoint).replace(":", "_")
    if eval_dir:
        result["also_in_training"] = in_training
    path = os.path.join(workdir, f"evaluation_{label}.json")
    atomic.write_json(path, result)
    print(format_table(result), flush=True)
    for item in skipped:
        print(f"skipped {item.get('name')}: {item.get('reason')}", flush=True)
    print(f"evaluation written to {path}", flush=True)
    return result


def training_copies(workdir: str, names: list[str], pieces: list[np.ndarray]) -> list[str]:
    """The names of the pieces whose tokens equal a training piece's of `workdir` (the same
    file, or a copy of it, under another name): scores on them are not held-out figures."""
    try:
        train = dataset.load_split(workdir, "train")
    except dataset.DatasetError:
        return []
    seen = {np.asarray(piece, np.int64).tobytes() for piece in train.pieces()}
    return [
        name
        for name, piece in zip(names, pieces, strict=True)
        if np.asarray(piece, np.int64).tobytes() in seen
    ]


def _nothing_usable(skipped: list[dict]) -> str:
    """Why a folder gave nothing: no MIDI files, or every file's reason (the first few)."""
    if not skipped:
        return "no .mid/.midi files in it"
    reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return f"none of its {len(skipped)} MIDI file(s) is usable: {reasons}{more}"


def _stats_with_copy(notes, steps_per_beat: int, copy_index) -> dict:
    stats = musicstats.piece_stats(notes, steps_per_beat=steps_per_beat)
    groups = musicstats.onset_groups(notes, steps_per_beat)
    stats["longest_copy"] = float(musicstats.longest_copy(groups, copy_index))
    return stats


def compare_samples(workdir: str, samples_dir: str, *, progress: bool = True) -> dict:
    """Musical statistics of the MIDI files in `samples_dir` against the held-out real pieces
    (the validation split, decoded), with the longest stretch copied from the training set.
    Writes report.json, report.md and plots into WORKDIR/reports/<samples folder name>/."""
    config = workdir_lib.load_config(workdir)
    tokenizer = get_tokenizer(config.tokenizer)
    spb = config.tokenizer.steps_per_beat
    train_split = dataset.load_split(workdir, "train")
    copy_index = musicstats.build_copy_index(
        [musicstats.onset_groups(tokenizer.decode(p).notes, spb) for p in train_split.pieces()]
    )
    generated, skipped = [], []
    for name, path in tqdm(find_midi_files(samples_dir), desc="samples", disable=not progress):
        try:
            generated.append(midi_io.read_midi(path, config.data, name)[0].notes)
        except midi_io.MidiReadError as err:
            skipped.append({"name": name, "reason": err.reason})
            print(f"skipped {name}: {err.reason}", flush=True)
    if not generated:
        raise UsageError(f"--samples {samples_dir}: {_nothing_usable(skipped)}")
    if skipped:
        logging.warning("--samples %s: %d of %d files skipped", samples_dir, len(skipped),
                        len(skipped) + len(generated))  # fmt: skip
    real = [tokenizer.decode(p).notes for p in dataset.load_split(workdir, "valid").pieces()]
    comparison = compare.compare_sets(
        [_stats_with_copy(n, spb, copy_index) for n in generated],
        [_stats_with_copy(n, spb, copy_index) for n in real],
        note_lengths=(
            [musicstats.note_length_histogram(n)[0] for n in generated],
            [musicstats.note_length_histogram(n)[0] for n in real],
        ),
    )
    comparison["skipped"] = skipped
    label = os.path.basename(os.path.normpath(samples_dir))
    out_dir = os.path.join(workdir, "reports", label)
    compare.write_report(
        out_dir, comparison, title=f"{label} vs held-out pieces",
        generated_name=label, real_name="held-out",
    )  # fmt: skip
    for name, s in comparison["statistics"].items():
        print(f"{name:<22} generated {s['generated']['mean']:9.3f}  real {s['real']['mean']:9.3f}"
              f"  overlap {s['overlap_area']:.3f}", flush=True)  # fmt: skip
    print(f"report written to {out_dir}/report.md", flush=True)
    return comparison
