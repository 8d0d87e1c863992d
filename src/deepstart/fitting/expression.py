"""A safe parser for the formulas ``deepstart fit-function`` learns, such as ``sin(3*x)+0.3*x``.

The text is parsed by Python's :mod:`ast` and every node is checked against a short whitelist:
numbers, the variable ``x``, the constants ``pi``, ``e`` and ``tau``, the operators
``+ - * / ** %`` (and unary ``-``/``+``), and calls of the functions in :data:`FUNCTIONS` with
plain positional arguments. Anything else (attribute access, subscripts, other names, lambdas,
comprehensions, keyword arguments, strings...) is rejected with a :class:`ExpressionError`
naming it. Nothing is ever passed to ``eval`` or ``exec``: the checked tree is walked by
:meth:`Expression.__call__`, which applies torch functions to a tensor of x values, so a
constant such as ``9**9**9`` becomes ``inf`` instead of a long Python computation.

Example:
    >>> f = parse_expression("sin(3*x) + 0.3*x")
    >>> f(torch.tensor([0.0, math.pi / 6]))
    tensor([0.0000, 1.1571])
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from deepstart.errors import DeepstartError


class ExpressionError(DeepstartError, ValueError):
    """A formula that cannot be parsed or uses something outside the whitelist."""


# name -> torch function of one tensor; the whole vocabulary of a formula.
FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "log": torch.log,
    "log2": torch.log2,
    "log10": torch.log10,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sign": torch.sign,
    "floor": torch.floor,
    "ceil": torch.ceil,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
VARIABLE = "x"
MAX_LENGTH = 500  # characters: deeply nested text can exhaust the parser's recursion
MAX_EXPONENT = 100.0  # |p| in a literal x**p; larger powers overflow float32 on any domain

_BINARY: dict[type, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    ast.Add: torch.add,
    ast.Sub: torch.sub,
    ast.Mult: torch.mul,
    ast.Div: torch.div,
    ast.Pow: torch.pow,
    ast.Mod: torch.remainder,
}
_UNARY: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    ast.USub: torch.neg,
    ast.UAdd: lambda t: t,
}
_SYMBOLS = {ast.BitXor: "^", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitAnd: "&"}
_SYMBOLS.update({ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~"})


@dataclass(frozen=True)
class Expression:
    """A checked formula of ``x``; call it on a tensor of x values.

    Attributes:
        text: the formula as given (stripped).
        tree: its checked ``ast`` expression node.
    """

    text: str
    tree: ast.expr

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` elementwise, in ``x``'s dtype and on its device; same shape as ``x``."""
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        out = _evaluate(self.tree, x)
        return out.expand_as(x).clone() if out.shape != x.shape else out

    def __str__(self) -> str:
        return self.text


def parse_expression(text: str) -> Expression:
    """Parse and check a formula of ``x``; raise :class:`ExpressionError` if it is not allowed.

    A lone function name means that function of x: ``"sin"`` is ``sin(x)``.

    Example:
        >>> parse_expression("exp(-x**2)")(torch.tensor([0.0, 1.0]))
        tensor([1.0000, 0.3679])
    """
    text = str(text).strip()
    if not text:
        raise ExpressionError("empty expression; give a formula of x such as 'sin(3*x)'")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters; the limit is {MAX_LENGTH}")
    if text in FUNCTIONS:
        text = f"{text}({VARIABLE})"
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse {text!r}: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"cannot parse {text!r}: nested too deeply") from None
    try:
        _check(tree, text)
    except RecursionError:
        raise ExpressionError(f"cannot parse {text!r}: nested too deeply") from None
    return Expression(text, tree)


def _allowed() -> str:
    return (
        f"use x, numbers, {', '.join(CONSTANTS)}, + - * / ** % and the functions "
        f"{', '.join(FUNCTIONS)}"
    )


def _reject(text: str, what: str) -> ExpressionError:
    return ExpressionError(f"expression {text!r}: {what} is not allowed; {_allowed()}")


def _check(node: ast.AST, text: str) -> None:
    """Raise unless every node of ``node`` is on the whitelist."""
    if isinstance(node, ast.Constant):
        # bool is an int subclass: True/False are names a user did not mean as numbers.
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise _reject(text, f"the constant {node.value!r}")
        return
    if isinstance(node, ast.Name):
        if node.id == VARIABLE or node.id in CONSTANTS:
            return
        if node.id in FUNCTIONS:
            raise _reject(text, f"the function {node.id!r} without an argument")
        raise _reject(text, f"the name {node.id!r}")
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            sym = _SYMBOLS.get(type(node.op), type(node.op).__name__)
            hint = " (for a power write **, not ^)" if sym == "^" else ""
            raise _reject(text, f"the operator {sym!r}{hint}")
        if isinstance(node.op, ast.Pow):
            _check_exponent(node.right, text)
        _check(node.left, text)
        _check(node.right, text)
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            sym = _SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise _reject(text, f"the operator {sym!r}")
        _check(node.operand, text)
        return
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):  # e.g. x.sin() or os.system(...)
            raise _reject(text, f"attribute access (.{node.func.attr})")
        if not isinstance(node.func, ast.Name):  # e.g. (lambda: 1)(): only names are called
            raise _reject(text, f"calling {ast.unparse(node.func)!r}")
        if node.func.id not in FUNCTIONS:
            raise _reject(text, f"the function {node.func.id!r}")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise _reject(text, f"{node.func.id}() with anything but one argument")
        _check(node.args[0], text)
        return
    if isinstance(node, ast.Attribute):
        raise _reject(text, f"attribute access (.{node.attr})")
    kind = {
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.Subscript: "indexing ([...])",
        ast.Compare: "a comparison",
        ast.BoolOp: "and/or",
        ast.IfExp: "if/else",
        ast.NamedExpr: "assignment (:=)",
    }.get(type(node), f"{type(node).__name__} syntax")
    raise _reject(text, kind)


def _check_exponent(node: ast.expr, text: str) -> None:
    """Refuse a literal exponent so large that the power overflows float32 anywhere."""
    value = node
    sign = 1.0
    while isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
        sign = -sign if isinstance(value.op, ast.USub) else sign
        value = value.operand
    number = isinstance(value, ast.Constant) and isinstance(value.value, (int, float))
    if number and not isinstance(value.value, bool) and abs(value.value) > MAX_EXPONENT:
        raise ExpressionError(
            f"expression {text!r}: the exponent {sign * value.value:g} is too large "
            f"(|p| <= {MAX_EXPONENT:g}); such a power is inf or 0 in float32"
        )


def _evaluate(node: ast.expr, x: torch.Tensor) -> torch.Tensor:
    """Walk a checked tree; every value is a tensor in x's dtype and device."""
    if isinstance(node, ast.Constant):
        return torch.tensor(float(node.value), dtype=x.dtype, device=x.device)
    if isinstance(node, ast.Name):
        if node.id == VARIABLE:
            return x
        return torch.tensor(CONSTANTS[node.id], dtype=x.dtype, device=x.device)
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, x), _evaluate(node.right, x))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, x))
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id](_evaluate(node.args[0], x))
    raise AssertionError(f"unchecked node {type(node).__name__}")  # _check rules this out
