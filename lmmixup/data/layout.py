"""The paper's prompt and target layout.

Prompt (chat messages; the trainer applies the tokenizer's chat template):
    system  the model is a data mix-up expert that thinks first, then answers, in the
            <think>/<answer> format
    user    "Merge the following k related question-answer pairs into one coherent,
            high-quality question-answer pair." + the shape the result must take + the
            members, each as "Pair i:" / "Q: ..." / "A: ...", numbered 1..k
The members are numbered, and the instruction states k, because the target's notes name them
("Pair i: ..."): a model that reads unnumbered members has nothing to count against and, after
SFT, ran on to "Pair 10" in a cluster of 3 (docs/LOG.md, issue 10).
Target (what SFT learns to emit; the rewards read the text inside <answer>):
    <think>\\n{reasoning}\\n</think>\\n\\n<answer>\\n{pair}\\n</answer>      (reasoning may be empty)
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

SYSTEM_PROMPT = (
    "You are a data mix-up expert. You merge several imperfect, related question-answer pairs "
    "into one coherent, high-quality pair that keeps their useful content and fixes their "
    "mistakes. Always think first, then answer, in exactly this format:\n"
    "<think>\nyour reasoning about the pairs\n</think>\n\n<answer>\nthe merged pair\n</answer>"
)

INSTRUCTION = ("Merge the following {k} related question-answer pairs into one coherent, "
               "high-quality question-answer pair.")

SHAPES: Dict[str, str] = {
    "qa": "Q: <question>\nA: <answer>",
    "mcq": "Q: <question>\nA) <option>\nB) <option>\nC) <option>\nD) <option>\nAnswer: <letter>",
    "tfq": "<question or statement>\nAnswer: <True or False>",
    "cs": "C: <category>\nS: <statement>",
    # Words, not placeholders: models trained on "<instruction>\n\n<a free-paragraph
    # response>" copied "<instruction>" into their answers (docs/LOG.md, issue 27).
    "para": "the instruction on its first line, an empty line, then the response as free text",
}


def user_prompt(members: Sequence[Tuple[str, str]], task: str) -> str:
    """The user turn: instruction (naming k), required shape, then each member as a numbered
    "Pair i:" block of Q:/A: lines."""
    listed = "\n\n".join(f"Pair {i}:\nQ: {q}\nA: {a}" for i, (q, a) in enumerate(members, start=1))
    return (f"{INSTRUCTION.format(k=len(members))}\nWrite the merged pair in this shape:\n"
            f"{SHAPES[task]}\n\n{listed}")


def prompt_messages(members: Sequence[Tuple[str, str]], task: str) -> List[Dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(members, task)}]


def target_text(reasoning: str, pair: str) -> str:
    return f"<think>\n{reasoning.strip()}\n</think>\n\n<answer>\n{pair.strip()}\n</answer>"
