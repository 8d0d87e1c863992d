"""A model's layer table: output shape, parameters and FLOPs of each layer, for one image.

What is counted: the multiply-adds (MACs) of ``nn.Conv2d`` and ``nn.Linear`` layers, the work
that dominates a conv net, and FLOPs = 2 x MACs (a multiply and an add each). A conv layer
does ``(C_in / groups) * kh * kw`` multiply-adds per output value, a linear layer
``in_features`` per output. Not counted: bias additions, BatchNorm, activations, pooling,
dropout, residual sums and softmax (together a few percent of a conv net's work).

The table is made by running one image through the model with forward hooks: first
``model.features(x)``, then ``model.head(f)``, so each row also says which side of the
features/head split it is on. Rows are the model's layers down to the first module that is not
a plain container (``nn.Sequential``, ``nn.ModuleList``); a block such as a residual block is one
row with the parameters and FLOPs of everything inside it.

Example:
    >>> print(summarize(create_model("mnist_cnn"), (1, 28, 28)))
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class LayerRow:
    """One row: ``name`` (dotted module name), ``layer`` (what it is), ``shape`` (output of
    one image: ``(C, H, W)`` or ``(D,)``), ``params``, ``macs`` (multiply-adds per image) and
    ``part`` ("features" or "head")."""

    name: str
    layer: str
    shape: tuple[int, ...]
    params: int
    macs: int
    part: str

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class ModelSummary:
    """The rows of :func:`summarize` and their totals (``print`` it for a text table)."""

    rows: list[LayerRow]
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]
    features_shape: tuple[int, ...] | None
    params: int
    trainable: int

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def footer(self) -> str:
        """The totals, and what the FLOPs count."""
        c, h, w = self.input_shape
        feats = f"features {_shape(self.features_shape)}; " if self.features_shape else ""
        return (
            f"input {c}x{h}x{w}; {feats}output {_shape(self.output_shape)}\n"
            f"{self.params:,} parameters ({self.trainable:,} trainable); "
            f"{human(self.flops)} FLOPs per image = 2 x {human(self.macs)} multiply-adds "
            f"of conv and linear layers (bias, BatchNorm, activations, pooling not counted)"
        )

    def table(self, title: str = "layers") -> Any:
        """A rich ``Table`` of the rows (the totals as its caption)."""
        from rich.table import Table

        table = Table(title=title, caption=self.footer(), caption_justify="left")
        for col in ("#", "name", "layer", "output shape", "parameters", "FLOPs"):
            right = col in ("#", "parameters", "FLOPs")
            table.add_column(col, justify="right" if right else "left")
        part = None
        for i, r in enumerate(self.rows):
            if r.part != part and part is not None:
                table.add_section()
            part = r.part
            table.add_row(str(i), r.name, r.layer, _shape(r.shape), f"{r.params:,}", human(r.flops))
        return table

    def __str__(self) -> str:
        head = ("#", "name", "layer", "output shape", "parameters", "FLOPs")
        lines = [
            (str(i), r.name, r.layer, _shape(r.shape), f"{r.params:,}", human(r.flops))
            for i, r in enumerate(self.rows)
        ]
        widths = [max(len(x[j]) for x in [head, *lines]) for j in range(len(head))]
        right = (True, False, False, False, True, True)

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(
                c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)
            ).rstrip()

        return "\n".join([fmt(head), *(fmt(x) for x in lines), self.footer()])

    def __repr__(self) -> str:  # one line; print() gives the table, a notebook the HTML one
        c, h, w = self.input_shape
        return (
            f"ModelSummary({len(self.rows)} layers, {human(self.params)} parameters, "
            f"{human(self.flops)} FLOPs per image, {c}x{h}x{w} -> {_shape(self.output_shape)})"
        )

    def _repr_html_(self) -> str:
        """The layer table, a line between the features and the head, the totals below."""
        from deepstart.display import html_table

        rows = [
            (i, r.name, r.layer, _shape(r.shape), f"{r.params:,}", human(r.flops))
            for i, r in enumerate(self.rows)
        ]
        cut = next((i for i, r in enumerate(self.rows) if r.part == "head"), None)
        table = html_table(("#", "name", "layer", "output shape", "parameters", "FLOPs"), rows)
        if cut:  # a heavier rule above the first row of the head
            rule = '<tr style="border-top:2px solid #888">'
            table = table.replace(f"<tr><td>{cut}</td>", f"{rule}<td>{cut}</td>", 1)
        return table + "<p>" + html.escape(self.footer()).replace("\n", "<br>") + "</p>"


def human(n: float) -> str:
    """``1234567 -> '1.23 M'``: three significant digits and a unit.

    Example:
        >>> human(1_234_567), human(999)
        ('1.23 M', '999')
    """
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g}"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if not shape else "x".join(str(s) for s in shape)


def _rows_of(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that get a row, by dotted name, in definition order."""
    rows: dict[str, nn.Module] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, _CONTAINERS):
                visit(full, child)
            else:
                rows[full] = child

    visit("", model)
    return rows


def describe_layer(m: nn.Module) -> str:
    """A short description of a module: ``Conv2d 1->32 3x3 s1 p1``, ``Linear 256->10``."""
    if isinstance(m, nn.Conv2d):
        k, s, p = m.kernel_size, m.stride, m.padding
        ks = f"{k[0]}x{k[1]}"
        ss = str(s[0]) if s[0] == s[1] else f"{s[0]},{s[1]}"
        ps = p if isinstance(p, str) else (str(p[0]) if p[0] == p[1] else f"{p[0]},{p[1]}")
        groups = f" g{m.groups}" if m.groups != 1 else ""
        bias = "" if m.bias is not None else " no bias"
        return f"Conv2d {m.in_channels}->{m.out_channels} {ks} s{ss} p{ps}{groups}{bias}"
    if isinstance(m, nn.Linear):
        return f"Linear {m.in_features}->{m.out_features}" + (
            "" if m.bias is not None else " no bias"
        )
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s = m.kernel_size, m.stride
        return f"{type(m).__name__} {k}x{k} s{s}" if isinstance(k, int) else type(m).__name__
    if isinstance(m, nn.Dropout):
        return f"Dropout p={m.p:g}"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(m).__name__} {m.num_features}"
    return type(m).__name__


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelSummary:
    """Run one zero image of ``input_shape`` ``(C, H, W)`` through ``model`` (eval mode,
    restored after) and collect each layer's output shape, parameters and multiply-adds.

    Example:
        >>> s = summarize(create_model("logreg"), (1, 28, 28))
        >>> s.params, s.macs
        (7850, 7840)
    """
    rows = _rows_of(model)
    owner = {id(m): name for name, m in rows.items()}
    shapes: dict[str, tuple[int, ...]] = {}
    macs: dict[str, int] = dict.fromkeys(rows, 0)
    parts: dict[str, str] = {}
    order: list[str] = []
    state = {"part": "features"}

    def row_of(name: str) -> str | None:
        # the row a (possibly nested) module belongs to: its longest row-name prefix
        while name:
            if name in rows:
                return name
            name = name.rpartition(".")[0]
        return None

    def on_row(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = owner[id(module)]
        if torch.is_tensor(output):
            shapes[name] = tuple(output.shape[1:])
        if name not in parts:
            parts[name] = state["part"]
            order.append(name)

    def on_compute(name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            row = row_of(name)
            if row is not None and torch.is_tensor(output):
                macs[row] += count_macs(module, output)

        return hook

    handles = [m.register_forward_hook(on_row) for m in rows.values()]
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(on_compute(name)))
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    features_shape = None
    try:
        model.eval()
        if hasattr(model, "features") and hasattr(model, "head"):
            f = model.features(x)
            features_shape = tuple(f.shape[1:])
            state["part"] = "head"
            out = model.head(f)
        else:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # Rows in the order they ran; layers that never ran (unused) at the end, without a shape.
    names = order + [n for n in rows if n not in parts]
    table = [
        LayerRow(
            name=n,
            layer=describe_layer(rows[n]),
            shape=shapes.get(n, ()),
            params=sum(p.numel() for p in rows[n].parameters()),
            macs=macs[n],
            part=parts.get(n, "unused"),
        )
        for n in names
    ]
    return ModelSummary(
        rows=table,
        input_shape=tuple(int(v) for v in input_shape),  # type: ignore[arg-type]
        output_shape=tuple(out.shape[1:]),
        features_shape=features_shape,
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def count_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds per image of one call of a conv or linear layer, from its output.

    Example:
        >>> count_macs(nn.Conv2d(1, 8, 3), torch.zeros(1, 8, 26, 26))  # 8*26*26 outputs x 9
        48672
    """
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0
