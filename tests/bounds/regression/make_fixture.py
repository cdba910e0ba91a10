"""Store today's radii of the scalar methods on every regression case into ``radii.json``.

Run from the repository root: ``python tests/bounds/regression/make_fixture.py``. It was run
once before the engine became a generic walker (issue 11); re-running it overwrites the
reference, so do so only for a deliberate change of results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # this checkout's boundkit

from radii_models import METHODS, cases  # noqa: E402

import boundkit  # noqa: E402
from boundkit.errors import UnsupportedLayerError  # noqa: E402


def main() -> None:
    data: dict[str, dict[str, list[float] | None]] = {}
    for name, (model, x) in cases().items():
        data[name] = {}
        for method in METHODS:
            try:
                data[name][method] = boundkit.certify(model, x, method).radius.tolist()
            except UnsupportedLayerError:
                data[name][method] = None
        print(name, data[name])
    path = Path(__file__).resolve().parent / "radii.json"
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
