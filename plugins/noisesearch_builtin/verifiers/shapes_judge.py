"""`shapes-judge`: the exact scene parser of the embedded `shapes` world, as a verifier.

It reads the objects back out of each image (colour segmentation, connected components,
shape by synthesis) and checks the prompt's GenEval-style clauses; the score is the fraction
satisfied. Search on it for the oracle ceiling, or judge a CLIP-driven search with it to see
verifier hacking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register
    from noisesearch_builtin.shapes.grammar import Prompt
    from noisesearch_builtin.shapes.judge import Verdict


class ShapesJudge:
    """Fraction of the prompt's clauses (objects, counts, colours, positions) an image satisfies.

    Exact on the `shapes` world's renders; needs a prompt in that world's grammar.

    :param exact: score 1.0 for an exact match and 0.0 otherwise, instead of the fraction.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"prompt"})

    def __init__(self, exact: bool = False) -> None:
        self.exact = bool(exact)
        self._prompts: dict[str, Prompt] = {}

    def prompt(self, text: str) -> Prompt:
        """The parsed prompt (cached); raises ``PromptError`` outside the grammar."""
        from noisesearch_builtin.shapes.grammar import parse_prompt

        if text not in self._prompts:
            self._prompts[text] = parse_prompt(text)
        return self._prompts[text]

    def verdicts(self, images: torch.Tensor, condition: Condition) -> list[Verdict]:
        """The clause-by-clause verdict of each image (B, 3, H, W) in [0, 1]."""
        from noisesearch_builtin.shapes.judge import judge

        if condition.prompt is None:
            raise ValueError("shapes-judge needs a prompt; the condition has none")
        prompt = self.prompt(condition.prompt)
        pixels = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return [judge(image, prompt) for image in pixels]  # (H, W, 3) each

    def verdict(self, image: torch.Tensor, condition: Condition) -> dict[str, Any]:
        """The judge's word on one image (3, H, W), for the run's table and report: every clause
        marked (``predicted``, e.g. "✓ two red circles; ✗ a blue square"), exact match
        (``agrees``), and the clauses as ``[text, satisfied]`` pairs."""
        (found,) = self.verdicts(image[None], condition)
        return {
            "predicted": "; ".join(f"{'✓' if ok else '✗'} {text}" for text, ok in found.clauses),
            "agrees": bool(found.exact),
            "clauses": [[text, bool(ok)] for text, ok in found.clauses],
        }

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        import torch

        verdicts = self.verdicts(images, condition)
        values = [float(v.exact) if self.exact else v.fraction for v in verdicts]
        return torch.tensor(values, dtype=torch.float32)


@hookimpl
def register_verifiers(register: Register) -> None:
    register("shapes-judge", ShapesJudge)
