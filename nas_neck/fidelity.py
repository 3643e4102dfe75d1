"""Fidelity: how much training a trial's result cost, and which results may share a front.

The bottom layer of the package (standard library only), like `metrics`. A multi-fidelity search
stores every (candidate, rung) as its own Optuna trial and every confirmation run too, so each
trial says what it is in its user attrs:

* ``epochs``: the epochs its model was trained for in all (a promotion counts the epochs of the
  rungs below it, whose checkpoint it continues); older trials lack it and take the study's.
* ``rung``: the rung index of a multi-fidelity search trial (0: a fresh candidate).
* ``promotes``: on a promotion, the number of the candidate's rung-0 trial; ``resumes``: the
  number of the trial whose checkpoint it continues (the rung below).
* ``confirm_of`` and ``seed``: on a confirmation run, the trial it retrains from scratch and the
  training seed; ``role`` is then ``"confirm"``.

Only results of one `Fidelity` are ever put on one front, and the sampler learns only from
``is_candidate`` trials (fresh samples and baselines at the lowest fidelity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EPOCHS = "epochs"
RUNG = "rung"
PROMOTES = "promotes"
RESUMES = "resumes"
CONFIRM_OF = "confirm_of"
SEED = "seed"
ROLE = "role"
CONFIRM = "confirm"


@dataclass(frozen=True, order=True)
class Fidelity:
    """Results comparable with each other: trained `epochs` in all, in a search or confirmed
    (several seeds, reported as mean and sd). Confirmed results order above search ones."""

    confirmed: bool
    epochs: int

    @property
    def label(self) -> str:
        return f"{self.epochs} epoch{'s' * (self.epochs != 1)}{', confirmed' if self.confirmed else ''}"

    @property
    def key(self) -> str:
        """A short name for files and MLflow keys (`e3`, `confirmed-e9`)."""
        return f"{'confirmed-' if self.confirmed else ''}e{self.epochs}"

    @classmethod
    def parse(cls, text: str) -> Fidelity:
        """From `key` (`e3`, `confirmed-e9`); ValueError otherwise."""
        confirmed = text.startswith("confirmed-")
        rest = text.removeprefix("confirmed-")
        if not rest.startswith("e") or not rest[1:].isdigit():
            raise ValueError(text)
        return cls(confirmed, int(rest[1:]))


def fidelity_of(attrs: Mapping[str, Any], default_epochs: int) -> Fidelity:
    """The fidelity of a trial with user attrs `attrs` (`default_epochs` when it records none)."""
    epochs = attrs.get(EPOCHS)
    return Fidelity(
        attrs.get(ROLE) == CONFIRM, int(epochs) if isinstance(epochs, int) else default_epochs
    )


def is_candidate(attrs: Mapping[str, Any]) -> bool:
    """A fresh sample or a baseline (rung 0 of a multi-fidelity search, or a plain trial): not a
    promotion and not a confirmation run. The sampler sees only these."""
    return PROMOTES not in attrs and attrs.get(ROLE) != CONFIRM


def study_epochs(study_attrs: Mapping[str, Any], fallback: int = 3) -> int:
    """The proxy's training epochs a study was made with (its stored `proxy` settings)."""
    try:
        return int(study_attrs["proxy"]["train"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return fallback
