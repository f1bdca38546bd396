"""A tokenizer's grammar as a finite-state table, usable from numpy and from jitted JAX code.

`next_state[s, t]` is the state after token `t` in state `s`, or -1 when `t` cannot come next.
The same table drives three things, so they can never disagree:
  * decoding: a token with `next_state[s, t] < 0` is skipped and counted (decoding never raises);
  * sampling: `next_state[s] >= 0` is the mask of allowed tokens (zero skips by construction);
  * the optional grammar-masked training loss.
State 0 is "before BOS"; `bos_state` is the state after BOS, where a piece's first token is read.
After EOS only PAD is allowed.

Optionally a grammar also tracks held keys, which no finite table can (the set of sounding
pitches has 2^88 values): `press[t]` / `release[t]` name the key (e.g. a pitch index) that token
`t` starts / stops holding, -1 for tokens that do neither. A release of a key not held, or a press
of a key already held, is then forbidden on top of the table. `walk` (hence decoding) and the
sampler and fine-tuning's policy (`walk_batch`) apply it; training and evaluation masks use the
table alone, a superset of what is allowed, since real data never breaks the rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcomposer.tokenizers.vocab import BOS, EOS, PAD, Vocab

START_STATE = 0
END_STATE = 1  # after EOS: only PAD may follow


@dataclasses.dataclass(frozen=True, eq=False)
class Grammar:
    next_state: np.ndarray  # int32 (S, V); -1 = token not allowed in that state
    bos_state: int  # state after BOS
    state_names: tuple[str, ...]  # for error messages and debugging
    press: np.ndarray | None = None  # int32 (V,): key token t starts holding; -1 = none
    release: np.ndarray | None = None  # int32 (V,): key token t stops holding; -1 = none
    num_keys: int = 0

    @property
    def num_states(self) -> int:
        return int(self.next_state.shape[0])

    def allowed(self, state: int) -> np.ndarray:
        return self.next_state[state] >= 0

    def walk(self, tokens: np.ndarray, state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Runs the grammar over `tokens`, skipping tokens it forbids.

        Returns (states_before, accepted): the state before each token and whether the token was
        accepted. A skipped token leaves the state unchanged. Starts after BOS unless told.
        """
        tokens = np.asarray(tokens, np.int64)
        s = self.bos_state if state is None else int(state)
        states = np.empty(tokens.shape[0], np.int32)
        accepted = np.zeros(tokens.shape[0], bool)
        table = self.next_state
        vocab_size = table.shape[1]
        press = release = held = None
        if self.press is not None:
            press, release = self.press.tolist(), self.release.tolist()
            held = [False] * self.num_keys
        for i, t in enumerate(tokens.tolist()):
            states[i] = s
            nxt = table[s, t] if 0 <= t < vocab_size else -1
            if nxt >= 0 and held is not None:
                released, pressed = release[t], press[t]
                if (released >= 0 and not held[released]) or (pressed >= 0 and held[pressed]):
                    nxt = -1
                elif release[t] >= 0:
                    held[release[t]] = False
                elif press[t] >= 0:
                    held[press[t]] = True
            if nxt >= 0:
                accepted[i] = True
                s = int(nxt)
        return states, accepted

    def held_after(self, tokens: np.ndarray) -> np.ndarray:
        """bool (num_keys,): the keys held after walking `tokens` from the BOS state."""
        held = np.zeros(self.num_keys, bool)
        if self.press is None:
            return held
        tokens = np.asarray(tokens, np.int64)
        _, accepted = self.walk(tokens)
        for t in tokens[accepted].tolist():
            if self.release[t] >= 0:
                held[self.release[t]] = False
            elif self.press[t] >= 0:
                held[self.press[t]] = True
        return held


# --- batch forms: numpy, or jax.numpy as `xp` (the jitted sampler and fine-tuning) ------------
def held_allows(held_BxK, press_V, release_V, xp=np):
    """bool (B, V): the tokens the held-key rule allows in rows holding `held_BxK` (bool (B, K)):
    a press of a key not held, a release of a key held, and every token that does neither
    (`Grammar.walk`'s check, for a batch)."""
    batch, keys = held_BxK.shape
    padded = xp.concatenate([held_BxK, xp.zeros((batch, 1), bool)], axis=1)  # K: "no key"
    released_ok = padded[:, xp.where(release_V >= 0, release_V, keys)] | (release_V < 0)
    pressed_ok = ~padded[:, xp.where(press_V >= 0, press_V, keys)] | (press_V < 0)
    return released_ok & pressed_ok


def held_after_tokens(held_BxK, token_B, press_V, release_V, xp=np):
    """bool (B, K): the keys held after each row's token `token_B` (int (B,)): its release, else
    its press, as `Grammar.walk` applies them."""
    keys = xp.arange(held_BxK.shape[1])
    released_B = release_V[token_B]
    pressed_B = xp.where(released_B >= 0, -1, press_V[token_B])
    return (held_BxK & (released_B[:, None] != keys[None])) | (pressed_B[:, None] == keys[None])


def walk_batch(next_state_SxV, tokens_BxT, start_B, held=None):
    """`Grammar.walk` for a batch, in jax (a scan): (states_BxT int32, held_ok_BxTxV bool or
    None): the state before each token and, with `held = (press_V, release_V, held_BxK)` (the
    held-key rule and the keys held at the start), the tokens that rule allows before each
    token. A token the table or the held-key rule forbids is skipped: state and keys stay."""
    import jax
    import jax.numpy as jnp

    table = jnp.asarray(next_state_SxV)
    rows = jnp.arange(tokens_BxT.shape[0])

    def body(loop, token_B):
        state_B, held_BxK = loop
        nxt_B = table[state_B, token_B]
        if held is None:
            return (jnp.where(nxt_B >= 0, nxt_B, state_B), None), (state_B, None)
        ok_BxV = held_allows(held_BxK, held[0], held[1], xp=jnp)
        accept_B = (nxt_B >= 0) & ok_BxV[rows, token_B]
        after = held_after_tokens(held_BxK, token_B, held[0], held[1], xp=jnp)
        new = (jnp.where(accept_B, nxt_B, state_B), jnp.where(accept_B[:, None], after, held_BxK))
        return new, (state_B, ok_BxV)

    init = (jnp.asarray(start_B, jnp.int32), None if held is None else jnp.asarray(held[2]))
    _, (states_TxB, ok_TxBxV) = jax.lax.scan(body, init, jnp.asarray(tokens_BxT).T)
    return states_TxB.T, None if held is None else jnp.swapaxes(ok_TxBxV, 0, 1)


class GrammarBuilder:
    """Collects named states and allowed transitions; `build()` freezes them into a table."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.edges: list[tuple[int, np.ndarray, int]] = []
        self.state("START")
        self.state("END")
        self.allow("END", [PAD], "END")

    def state(self, name: str) -> int:
        if name not in self.index:
            self.index[name] = len(self.names)
            self.names.append(name)
        return self.index[name]

    def allow(self, src: str, tokens, dst: str) -> None:
        self.edges.append(
            (self.state(src), np.asarray(tokens, np.int64).reshape(-1), self.state(dst))
        )

    def build(
        self, bos_state: str, press: np.ndarray | None = None, release: np.ndarray | None = None
    ) -> Grammar:
        self.allow("START", [BOS], bos_state)
        table = np.full((len(self.names), self.vocab.size), -1, np.int32)
        for src, toks, dst in self.edges:
            table[src, toks] = dst
        num_keys = 0 if press is None else int(max(press.max(), release.max()) + 1)
        return Grammar(
            next_state=table,
            bos_state=self.index[bos_state],
            state_names=tuple(self.names),
            press=None if press is None else np.asarray(press, np.int32),
            release=None if release is None else np.asarray(release, np.int32),
            num_keys=num_keys,
        )


def allow_eos(builder: GrammarBuilder, state: str) -> None:
    builder.allow(state, [EOS], "END")
