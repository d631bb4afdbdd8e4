"""The paper's prompt and target layout.

Prompt (chat messages; the trainer applies the tokenizer's chat template):
    system  the model is a data mix-up expert that thinks first, then answers, in the
            <think>/<answer> format
    user    "Merge the following related question-answer pairs into one coherent,
            high-quality question-answer pair." + the shape the result must take + the
            members, each as "Q: ..." / "A: ..."
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

INSTRUCTION = ("Merge the following related question-answer pairs into one coherent, "
               "high-quality question-answer pair.")

SHAPES: Dict[str, str] = {
    "qa": "Q: <question>\nA: <answer>",
    "mcq": "Q: <question>\nA) <option>\nB) <option>\nC) <option>\nD) <option>\nAnswer: <letter>",
    "tfq": "<question or statement>\nAnswer: <True or False>",
    "cs": "C: <category>\nS: <statement>",
    "para": "<instruction>\n\n<a free-paragraph response>",
}


def user_prompt(members: Sequence[Tuple[str, str]], task: str) -> str:
    """The user turn: instruction, required shape, then each member as Q:/A: lines."""
    listed = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in members)
    return f"{INSTRUCTION}\nWrite the merged pair in this shape:\n{SHAPES[task]}\n\n{listed}"


def prompt_messages(members: Sequence[Tuple[str, str]], task: str) -> List[Dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(members, task)}]


def target_text(reasoning: str, pair: str) -> str:
    return f"<think>\n{reasoning.strip()}\n</think>\n\n<answer>\n{pair.strip()}\n</answer>"
