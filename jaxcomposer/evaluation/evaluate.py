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

import contextlib
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from jaxcomposer import workdir_lib
from jaxcomposer.core import atomic
from jaxcomposer.core.errors import Failure, UsageError
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.data.ingest import find_midi_files
from jaxcomposer.evaluation import compare, likelihood, musicstats, two_sample
from jaxcomposer.evaluation import ensemble as ensemble_lib
from jaxcomposer.model import StepFunction, conditioning
from jaxcomposer.music.keys import transpose_key
from jaxcomposer.tokenizers import EOS, PAD, Tokenizer, get_tokenizer


def _show_bar(progress: bool) -> bool:
    """The rule of prepare's and train's bars: only when asked for and stderr is a terminal (a
    log file gets the result lines, not a bar redrawn into it)."""
    return bool(progress) and sys.stderr.isatty()


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
    if decoded.frames is not None:  # tokens in frames (the tokenizer counts them)
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
    ensemble: Sequence[str] = (),
    transpositions: int = 0,
) -> dict:
    """Loads `checkpoint` ('best', 'latest', a step, 'finetuned[:STEP]') and scores pieces;
    returns {'pieces': {...}, 'overall': {...}}.
    `labels[i]` ({'keys', 'styles'}: int per token) feed a conditioned model's [X; M];
    `seconds` (by piece name) adds nats_per_second where every piece has it.
    `ensemble`: more workdirs (their own `checkpoint`) whose models are mixed with this one's,
    token by token; `transpositions` N > 0: every model also reads each piece transposed by
    each shift in -N..N semitones, and those views join the mixture (evaluation/ensemble.py).
    The result then also has 'members', each model's own figures on the pieces as they are,
    and 'views'. Raises UsageError when a member's tokenizer or vocabulary differs."""
    workdirs = [workdir, *ensemble]
    shifts = [0] + [s for s in range(-transpositions, transpositions + 1) if s]
    mixing = len(workdirs) * len(shifts) > 1
    bar = tqdm(total=len(pieces) * len(workdirs) * len(shifts), desc="evaluate", unit="piece",
               disable=not _show_bar(progress))  # fmt: skip
    models = [workdir_lib.restore_for_inference(w, checkpoint) for w in workdirs]
    for member, restored in zip(workdirs[1:], models[1:], strict=True):
        _check_member(models[0], restored, member)  # before any scoring
    tokenizer = models[0].tokenizer  # every member's (checked above)
    vocab_size = tokenizer.vocab.size
    mixtures = [ensemble_lib.Mixture(p.size - 1, vocab_size) for p in pieces] if mixing else []
    members = []
    for shift in shifts:  # shift 0 first: each model's own figures
        table = tokenizer.transpose_table(shift)
        views = [ensemble_lib.transposed_piece(p, table, PAD) for p in pieces]
        moved_labels = None if labels is None else [
            {**lab, "keys": transpose_key(lab["keys"], shift)} if "keys" in lab else lab
            for lab in labels
        ]  # fmt: skip
        for restored in models:
            scored = _score_member(
                restored, [v for v, _ in views], moved_labels, bar.update, keep_log_probs=mixing
            )
            if shift == 0:
                members.append((restored, scored))
            if not mixing:
                continue
            for mixture, (_, k), result in zip(mixtures, views, scored, strict=True):
                valid = np.arange(len(result[0])) < k  # inputs tokens[: t + 1] all moved
                mixture.add(ensemble_lib.map_back(result[2], table), valid)
    bar.close()
    seconds = seconds if seconds and all(n in seconds for n in names) else {}

    def figures(scored) -> dict[str, dict]:
        return {
            name: piece_metrics(tokenizer, tokens, s[0], s[1], seconds.get(name))
            for name, tokens, s in zip(names, pieces, scored, strict=True)
        }

    if mixing:
        per_piece = figures([m.scores(t) for m, t in zip(mixtures, pieces, strict=True)])
    else:
        per_piece = figures(members[0][1])
    result = {
        "checkpoint_step": members[0][0].step,
        "tokenizer": tokenizer.name,
        "overall": total(per_piece),
        "pieces": {name: finish(m) for name, m in per_piece.items()},
    }
    if mixing:
        result["views"] = {"models": len(workdirs), "shifts": shifts}
        result["members"] = [
            {"workdir": os.path.abspath(w), "checkpoint_step": r.step,
             "overall": total(figures(scored))}
            for w, (r, scored) in zip(workdirs, members, strict=True)
        ]  # fmt: skip
    return result


def _score_member(restored, pieces, labels, progress, *, keep_log_probs: bool) -> list[tuple]:
    """One model's per-token (nll, correct[, log_probs]) for every piece (likelihood.py)."""
    config = restored.config
    step_fn = StepFunction(restored.model)
    kwargs = dict(
        window=config.train.seq_len, batch_size=config.train.batch_size, progress=progress,
        log_probs=keep_log_probs,
    )  # fmt: skip
    if config.train.loss_on_last_only:  # the original's model predicts from a fixed window
        return likelihood.sliding_window_nll(restored.variables, step_fn, pieces, **kwargs)
    grammar = restored.tokenizer.grammar if config.train.grammar_mask_loss else None
    conds = _conds(restored.spec, pieces, labels)
    return likelihood.piece_token_nll(
        restored.variables, step_fn, pieces, grammar=grammar, conds=conds, **kwargs
    )


def _check_member(first, restored, workdir: str) -> None:
    """Members must read the same tokens: the same tokenizer settings and vocabulary."""
    if restored.tokenizer.vocab != first.tokenizer.vocab or (
        restored.config.tokenizer != first.config.tokenizer
    ):
        raise UsageError(
            f"--ensemble {workdir}: its tokenizer ({restored.tokenizer.name}, vocabulary "
            f"{restored.tokenizer.vocab.size}) differs from the first workdir's "
            f"({first.tokenizer.name}, vocabulary {first.tokenizer.vocab.size}); an ensemble "
            "mixes predictions of the same tokens"
        )


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
    ensemble: Sequence[str] = (),
    transpositions: int = 0,
) -> dict:
    """Scores the validation split, or every readable MIDI file of `eval_dir`, with the model of
    `checkpoint` ('best', 'latest', a step, 'finetuned[:STEP]'), or with the token-by-token
    mixture of it, the `ensemble` workdirs' models and their `transpositions` views
    (score_pieces). Writes
    WORKDIR/evaluation_<valid | dir_FOLDERNAME>[_CHECKPOINT][_ensembleK][_transposedN].json,
    so a folder named 'valid', another checkpoint or a mixture never overwrites a report."""
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
        ensemble=ensemble,
        transpositions=transpositions,
    )
    result.update(data=eval_dir or "valid split", skipped=skipped, checkpoint=str(checkpoint))
    if str(checkpoint) != "best":
        label += "_" + str(checkpoint).replace(":", "_")
    if ensemble:
        label += f"_ensemble{len(result['members'])}"
    if transpositions:
        label += f"_transposed{transpositions}"
    if eval_dir:
        result["also_in_training"] = in_training
    path = os.path.join(workdir, f"evaluation_{label}.json")
    # Printed first: a workdir that cannot be written (read-only, full) still shows the result.
    print(format_table(result), flush=True)
    for i, member in enumerate(result.get("members", ())):
        print(f"member {i}: {member['workdir']} (step {member['checkpoint_step']}): "
              f"{_headline(member['overall'])}", flush=True)  # fmt: skip
    for item in skipped:
        print(f"skipped {item.get('name')}: {item.get('reason')}", flush=True)
    with _saving(path, "the evaluation above"):
        atomic.write_json(path, result)
    print(f"evaluation written to {path}", flush=True)
    return result


class NotSavedError(Failure):
    """A result was computed and printed but its file could not be written."""


@contextlib.contextmanager
def _saving(path: str, what: str):
    """Turns an OSError writing `path` into one NotSavedError line that names the path, the
    reason and that `what` was printed but not saved."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or type(e).__name__
        where = e.filename or path
        raise NotSavedError(f"{where}: {reason}; {what} was printed but not saved") from None


def _headline(overall: dict) -> str:
    name = "nats_per_frame" if "nats_per_frame" in overall else "nats_per_token"
    return f"{overall[name]:.4f} {name.replace('_', ' ')}"


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
    stats.update(musicstats.harmony_stats(notes, steps_per_beat=steps_per_beat))
    groups = musicstats.onset_groups(notes, steps_per_beat)
    stats["longest_copy"] = float(musicstats.longest_copy(groups, copy_index))
    return stats


def compare_samples(
    workdir: str,
    samples_dir: str,
    *,
    progress: bool = True,
    real_tokens: int = 0,
    bars: int = 8,
    permutations: int = 100,
) -> dict:
    """Musical statistics of the MIDI files in `samples_dir` against the held-out real pieces
    (the validation split, decoded), with the longest stretch copied from the training set.
    `real_tokens` N > 0 compares with each held-out piece's first N tokens instead, the length
    of samples of N tokens: statistics that grow with length (pitch range, distinct pitches,
    the longest run) then compare like with like. Adds the harmony statistics, the pooled
    vertical interval-class distributions, and the classifier two-sample test on the first
    `bars` bars of every piece (samples vs held-out pieces; control: two random halves of the
    held-out pieces pooled with as many training pieces as there are samples, seeded by the
    config's seed; `permutations` labels shuffles for its p-value). Writes report.json,
    report.md and plots into WORKDIR/reports/<samples folder name>/."""
    config = workdir_lib.load_config(workdir)
    tokenizer = get_tokenizer(config.tokenizer)
    spb = config.tokenizer.steps_per_beat
    train_split = dataset.load_split(workdir, "train")
    copy_index = musicstats.build_copy_index(
        [musicstats.onset_groups(tokenizer.decode(p).notes, spb) for p in train_split.pieces()]
    )
    generated, generated_cut, skipped = [], [], []
    files = find_midi_files(samples_dir)
    for name, path in tqdm(files, desc="samples", disable=not _show_bar(progress)):
        try:
            piece = midi_io.read_midi(path, config.data, name)[0]
        except midi_io.MidiReadError as err:
            skipped.append({"name": name, "reason": err.reason})
            print(f"skipped {name}: {err.reason}", flush=True)
            continue
        generated.append(piece.notes)
        generated_cut.append(two_sample.first_bars(piece.notes, piece.time_signatures, bars))
    if not generated:
        raise UsageError(f"--samples {samples_dir}: {_nothing_usable(skipped)}")
    if skipped:
        logging.warning("--samples %s: %d of %d files skipped", samples_dir, len(skipped),
                        len(skipped) + len(generated))  # fmt: skip
    cut = real_tokens + 1 if real_tokens > 0 else None  # + BOS
    decoded = [tokenizer.decode(p[:cut]) for p in dataset.load_split(workdir, "valid").pieces()]
    real = [d.notes for d in decoded]
    rng = np.random.default_rng(config.seed)
    train_pieces = list(train_split.pieces())
    chosen = rng.permutation(len(train_pieces))[: len(generated)]
    others = [tokenizer.decode(train_pieces[i][:cut]) for i in sorted(chosen)]

    def first(d):
        return two_sample.first_bars(d.notes, d.time_signatures, bars)

    c2st = two_sample.generated_vs_real(
        generated_cut, [first(d) for d in decoded], [first(d) for d in others],
        steps_per_beat=spb, permutations=permutations, seed=config.seed,
    )  # fmt: skip
    comparison = compare.compare_sets(
        [_stats_with_copy(n, spb, copy_index) for n in generated],
        [_stats_with_copy(n, spb, copy_index) for n in real],
        note_lengths=(
            [musicstats.note_length_histogram(n)[0] for n in generated],
            [musicstats.note_length_histogram(n)[0] for n in real],
        ),
        vertical_intervals=(
            [musicstats.vertical_interval_counts(n, spb) for n in generated],
            [musicstats.vertical_interval_counts(n, spb) for n in real],
        ),
    )
    comparison["two_sample"] = {"bars": bars, **c2st}
    comparison["skipped"] = skipped
    label = os.path.basename(os.path.normpath(samples_dir))
    out_dir = os.path.join(workdir, "reports", label)
    for name, s in comparison["statistics"].items():
        print(f"{name:<22} generated {s['generated']['mean']:9.3f}  real {s['real']['mean']:9.3f}"
              f"  overlap {s['overlap_area']:.3f}", flush=True)  # fmt: skip
    print(f"vertical interval overlap {comparison['vertical_interval_histogram']['overlap']:.3f}"
          f"  classifier {two_sample.describe(c2st['test'])}"
          f"  control {two_sample.describe(c2st['control'])}", flush=True)  # fmt: skip
    with _saving(out_dir, "the comparison above"):
        compare.write_report(
            out_dir, comparison,
            title=f"{label} vs held-out pieces" + (f" (first {real_tokens} tokens)" if cut else ""),
            generated_name=label, real_name="held-out",
        )  # fmt: skip
    print(f"report written to {out_dir}/report.md", flush=True)
    return comparison
