"""Count the robustness suite's cases by class of bad input x entry point.

Run from the repository root: ``python tests/robustness/case_table.py`` prints the Markdown
table; ``--write`` also replaces the table in ``docs/robustness.md``. The cases are the test
ids pytest collects in ``tests/robustness`` and in the hostile-input tests of the ONNX
importer and the cluster mode (``EXTRA``; one parametrisation = one case), so the table
cannot drift from the suite.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: test function -> class of bad input (issue #12's classes, plus the CLI's own duties)
CLASS = {
    # tensors
    "test_bad_tensor_is_named": "tensors",
    "test_outside_box_is_named": "tensors",
    "test_huge_finite_values_certify_or_refuse": "tensors",
    "test_every_float_dtype_of_x_gives_a_result": "tensors",
    "test_large_batch_is_chunked_consistently": "tensors",
    "test_non_contiguous_and_expanded_inputs": "tensors",
    "test_requires_grad_input_is_left_alone": "tensors",
    "test_property_attack_never_returns_a_number_for_a_bad_sample": "tensors",
    "test_bad_data": "tensors",
    # models
    "test_bad_model_is_named": "models",
    "test_nan_weight_never_reads_as_robust": "models",
    "test_odd_output_is_named": "models",
    "test_unsupported_operation_is_named": "models",
    "test_unsupported_operation_still_attacked": "models",
    "test_zero_weights_give_consistent_trivial_answers": "models",
    "test_zero_first_layer_is_certified_everywhere": "models",
    "test_every_model_dtype_gives_a_result_or_a_named_refusal": "models",
    "test_model_on_another_device_than_requested": "models",
    "test_scripted_module_is_accepted_by_attack": "models",
    "test_parameter_free_model": "models",
    "test_model_raising_on_forward_is_named": "models",
    # arguments
    "test_bad_argument_is_named": "arguments",
    "test_small_budgets_give_verified_results": "arguments",
    "test_bad_argument": "arguments",
    "test_bad_budget": "arguments",
    "test_train_and_demo_bad_arguments": "arguments",
    # interruption
    "test_ctrl_c_at_any_stage": "interruption",
    "test_real_sigint_in_a_subprocess": "interruption",
    # environment
    "test_no_cuda_is_a_device_error_not_an_assertion": "environment",
    "test_offline_missing_data_is_one_complete_line": "environment",
    "test_no_gpu_is_a_clear_line_for_train": "environment",
    "test_read_only_destination": "environment",
    "test_load_model_device": "environment",
    "test_unreadable_file": "environment",
    # outputs and provenance (paths aliasing inputs, atomic results, provenance, splits)
    "test_out_file_never_overwrites_an_input": "outputs",
    "test_out_dir_holding_an_input_refused": "outputs",
    "test_out_dir_foreign_and_not_empty_refused": "outputs",
    "test_out_never_replaces_the_data_folder": "outputs",
    "test_out_file_is_a_directory": "outputs",
    "test_out_below_a_file": "outputs",
    "test_results_directory_replaced_whole_never_mixed": "outputs",
    "test_every_result_records_its_provenance": "outputs",
    "test_compare_records_provenance_per_model": "outputs",
    "test_report_out_holding_the_results_refused": "outputs",
    "test_train_out_is_a_file": "outputs",
    "test_demo_out_foreign_dir": "outputs",
    "test_seed_never_changes_the_split": "data splits",
    "test_training_images_warned_loudly": "data splits",
    "test_legacy_model_trained_on_another_split_warned": "data splits",
    "test_test_split_of_own_data_not_warned": "data splits",
    "test_training_data_file_warned": "data splits",
    # structure of the CLI
    "test_bugs_are_not_disguised_as_bad_input": "structure",
    "test_preamble_is_shared_by_every_model_command": "structure",
    "test_help_documents_trust_code": "structure",
}
CLASSES = ["tensors", "models", "files", "arguments", "interruption", "environment",
           "outputs", "data splits", "structure", "cluster"]
#: hostile-input tests outside tests/robustness (issue #26): ONNX files, cluster options,
#: kept shards, the executor's options
EXTRA = [
    "tests/models/test_onnx_hostile.py",
    "tests/distributed/test_evidence.py",
    "tests/distributed/test_ray.py::test_certify_on_ray_takes_every_option_and_custom_methods",
    "tests/distributed/test_ray.py::"
    "test_tampered_or_cut_kept_shards_are_refused_and_reuse_is_recorded",
]
CLASS.update({
    "test_samples_outside_the_box_are_reported_with_their_radius": "tensors",
    "test_the_whole_ball_radius_of_an_outside_sample_holds": "tensors",
    "test_methods_without_a_box_report_nothing_of_the_kind": "tensors",
})
API = ["certify", "attack", "crosscheck", "exact_radius", "load_model", "load_tensor_file",
       "read_json"]
CLI = ["certify", "attack", "crosscheck", "compare", "train", "report", "demo"]
LABEL = {"load_tensor_file": "data.load_tensor_file", "read_json": "report.read_json"}
COLUMNS = [f"`bk.{LABEL.get(e, e)}`" for e in API] + [f"`boundkit {c}`" for c in CLI]


def classify(test_id: str, params: dict) -> tuple[str, list[str]]:
    """(class, entry point columns) of one collected test and its parameters."""
    path, _, rest = test_id.partition("::")
    func = rest.partition("[")[0]
    if path.endswith("test_box_status.py"):
        return "tensors", ["`bk.certify`"]
    if path.endswith("test_onnx_hostile.py"):
        return "files", ["`bk.load_model`"]
    if path.startswith("tests/distributed/"):
        cli = "option" in func or "comes_up" in func or "tampered" in func
        return "cluster", ["`boundkit certify`" if cli else "`bk.certify`"]
    cli = "test_cli" in path
    if path.endswith("test_files.py"):
        cls = CLASS.get(func, "files")
        if "data" in func or "npz" in func:
            return cls, ["`bk.data.load_tensor_file`"]
        if "results" in func:
            return cls, ["`bk.report.read_json`"]
        return cls, ["`bk.load_model`"]
    cls = CLASS.get(func)
    if cls is None and cli and ("model_file" in func or "trust_code" in func
                                or "state_dict" in func or "report_bad" in func):
        cls = "files"
    if cls is None:
        raise SystemExit(f"unclassified test {test_id}: add it to CLASS in {__file__}")
    entry = params.get("cmd") or params.get("entry")
    if entry is None and isinstance(params.get("argv"), list):
        entry = params["argv"][0]
    if entry is None and isinstance(params.get("case"), tuple) and not cli:
        entry = params["case"][0]
    if cli:
        if entry is None and cls == "data splits":
            entry = "certify"  # the split checks run through certify's preamble
        if entry is None:
            entry = next((c for c in CLI if c in func), None)
        if entry is None:
            entry = {"test_real_sigint_in_a_subprocess": "crosscheck",
                     "test_results_directory_replaced_whole_never_mixed": "crosscheck"}.get(
                func, "certify" if cls == "data splits" else None)
        found = [entry] if entry else ["certify", "attack", "crosscheck", "compare"]
        return cls, [f"`boundkit {f}`" for f in found]
    if entry not in API:
        entry = "attack" if "attack" in func else None
    found = [entry] if entry else ["certify", "attack", "crosscheck", "exact_radius"]
    return cls, [f"`bk.{f}`" for f in found]


def collect() -> list[tuple[str, dict]]:
    """(node id, parameters) of every case, collected by pytest itself."""
    import os

    import pytest

    class Recorder:
        rows: list[tuple[str, dict]] = []

        def pytest_collection_modifyitems(self, items: list) -> None:
            for it in items:
                spec = getattr(it, "callspec", None)
                self.rows.append((it.nodeid, dict(spec.params) if spec else {}))

    rec = Recorder()
    os.chdir(ROOT)
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/robustness",
                        *EXTRA], plugins=[rec])
    if code != 0:
        raise SystemExit(f"collection failed ({code})")
    return rec.rows


def table(ids: list[tuple[str, dict]]) -> str:
    counts: Counter[tuple[str, str]] = Counter()
    per_class: Counter[str] = Counter()
    for t, params in ids:
        cls, cols = classify(t, params)
        per_class[cls] += 1
        for c in cols:
            counts[(cls, c)] += 1
    used = [c for c in COLUMNS if any(counts[(k, c)] for k in CLASSES)]
    lines = ["| class \\ entry point | " + " | ".join(used) + " | cases |",
             "|---" * (len(used) + 2) + "|"]
    for k in CLASSES:
        row = [str(counts[(k, c)] or "") for c in used]
        lines.append(f"| {k} | " + " | ".join(row) + f" | **{per_class[k]}** |")
    col_tot = [str(sum(counts[(k, c)] for k in CLASSES)) for c in used]
    lines.append("| cases touching it | " + " | ".join(col_tot) + f" | **{len(ids)}** |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="update docs/robustness.md")
    args = ap.parse_args()
    import contextlib
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rows = collect()
    except SystemExit:
        print(buf.getvalue()[-3000:])
        raise
    text = table(rows)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "robustness.md"
        old = doc.read_text()
        start, end = "<!-- case-table:start -->", "<!-- case-table:end -->"
        a, b = old.index(start) + len(start), old.index(end)
        doc.write_text(old[:a] + "\n" + text + "\n" + old[b:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
