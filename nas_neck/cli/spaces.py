"""`nas-neck spaces`: the search spaces shipped with nas-neck, one line each."""

from __future__ import annotations

from nas_neck.cli.console import console, friendly


@friendly
def spaces() -> None:
    """List the shipped search spaces and fixed architectures, and which shipped architectures each
    family holds exactly; pass a name wherever a space or architecture file is taken (`show fpn`,
    `search --space pafpn-family`, `train --arch pafpn`)."""
    from nas_neck.dsl import load_space, shipped_names
    from nas_neck.dsl.membership import holds

    loaded = {name: load_space(name) for name in shipped_names()}
    fixed = {name: s.sample() for name, s in loaded.items() if s.is_fixed}
    rows = [("name", "kind", "levels", "holds", "description")]
    for name, space in loaded.items():
        kind = "architecture" if space.is_fixed else f"{len(space.parameters())} parameters"
        levels = f"P{min(space.cell_levels)}-P{max(space.cell_levels)}"
        held = [] if space.is_fixed else [a for a, arch in fixed.items() if holds(space, arch)]
        rows.append((name, kind, levels, ", ".join(held) or "-", space.spec.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for k, row in enumerate(rows):
        line = "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4]])
        console.print(
            line,
            style="bold" if k == 0 else None,
            markup=False,
            highlight=False,
            no_wrap=True,
            overflow="ellipsis",
        )
