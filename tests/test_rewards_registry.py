"""The built-in rewards are listed in one table (registry.REWARDS), not registered as a side
effect of importing their modules; the shared group normalisation lives with the math."""

import ast

from conftest import ROOT
from lmmixup import attribution, grpo
from lmmixup.rewards import registry

BUILT_IN = {"tags", "length", "overlong", "format", "alignment", "quality", "no_answer"}


def test_every_built_in_reward_is_in_the_one_table():
    assert BUILT_IN <= set(registry.REWARDS)  # tests may add probes with register_reward
    for name in BUILT_IN:
        assert registry.REWARDS[name].__module__.startswith("lmmixup.rewards.")


def test_no_module_registers_a_reward_when_imported():
    """No `@register_reward(...)` and no module-level register_reward call in the package."""
    offenders = []
    for path in sorted((ROOT / "lmmixup").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            decorators = getattr(node, "decorator_list", [])
            calls = [d for d in decorators if isinstance(d, ast.Call)]
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                calls.append(node.value)
            for call in calls:
                func = call.func
                while isinstance(func, ast.Call):  # register_reward("x")(fn)
                    func = func.func
                name = getattr(func, "id", getattr(func, "attr", ""))
                if name == "register_reward":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_group_normalize_is_the_math_modules_one_function():
    assert registry.group_normalize is grpo.group_normalize
    assert attribution.group_normalize is grpo.group_normalize
