"""Spec (YAML) cases of the corpus (``spec/``): broken cohort specs (load_spec -> one SpecError naming the
field and the line) and valid specs whose slide data is broken (check_inputs / validate --strict)."""

from __future__ import annotations

from corpus_registry import case


def spec(slides: str, *, extra: str = "", name: str = "bad-inputs") -> bytes:
    return (f"name: {name}\noutput_dir: out\npatients:\n{slides}{extra}").encode()


GOOD_S1 = """  - id: P1
    slides:
      - id: S1
        reader: legacy_st
        counts: ../legacy/S1.tsv.gz
        spots: ../legacy/S1_selection.tsv
        labels: ../legacy/S1_labels.tsv
        image: ../legacy/S1.jpg
"""


def legacy_slide(sid: str, counts: str, *, patient: str = "P2", spots: str = "../legacy/S1_selection.tsv",
                 more: str = "") -> str:
    return (f"  - id: {patient}\n    slides:\n      - id: {sid}\n        reader: legacy_st\n"
            f"        counts: {counts}\n        spots: {spots}\n{more}")


def _line(text: bytes, needle: str) -> int:
    for i, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the spec")


def build_spec_cases() -> None:
    """Register the spec cases (their slide paths point at the legacy/, visium/ and h5/ cases)."""
    # ---- specs: the spec itself is bad (load_spec -> SpecError naming field + line)
    def bad_spec(id, doc, text: bytes, *, field, needle=None, line=None, msg=""):
        rel = f"spec/{id}.yaml"
        case(id, "load_spec", doc, args={"spec": rel}, file=f"{id}.yaml", field=field,
             line=line if line is not None else (_line(text, needle) if needle else None), text=msg,
             files={rel: text})

    t = spec(GOOD_S1.replace("reader: legacy_st", "reader: [legacy_st"))
    bad_spec("malformed_yaml", "an unclosed flow sequence (the parser notices on the next line and names both)",
             t, field="<yaml>", line=_line(t, "[legacy_st") + 1, msg="flow sequence started at line 7")
    t = spec(GOOD_S1).replace(b"        counts:", b"\tcounts:")
    bad_spec("tab_indent", "a tab used for indentation", t, field="<yaml>", needle="\tcounts", msg="")
    t = spec(GOOD_S1.replace("- id: S1", "- id: !!python/object/apply:os.system ['touch senca_pwned']"))
    bad_spec("python_object_tag", "a !!python/object/apply tag: refused by safe loading, nothing executed", t,
             field="<yaml>", needle="python/object", msg="'!!python/object/apply:os.system' is not allowed")
    t = spec(GOOD_S1.replace("        spots:", "        spot:"))
    bad_spec("unknown_key", "a typo: 'spot' for 'spots' (one error for the unknown key, one for the missing "
             "field, both on the slide)", t, field="patients[0].slides[0].spot", needle="spot:",
             msg="unknown field")
    t = spec(GOOD_S1, extra="trainnig:\n  epochs: 3\n")
    bad_spec("unknown_top_key", "an unknown top-level section", t, field="trainnig", needle="trainnig",
             msg="unknown field")
    t = spec(GOOD_S1, extra="training:\n  epochs: many\n")
    bad_spec("wrong_type_scalar", "training.epochs: 'many'", t, field="training.epochs", needle="epochs: many",
             msg="integer")
    t = spec(GOOD_S1 + "        image_scale: half\n")
    bad_spec("wrong_type_slide", "image_scale: 'half'", t, field="patients[0].slides[0].image_scale",
             needle="image_scale", msg="number")
    t = b"name: bad-inputs\npatients:\n  P1: {slides: []}\n"
    bad_spec("wrong_type_structure", "patients is a mapping, not a list", t, field="patients", needle="patients:",
             msg="list")
    t = spec(GOOD_S1 + "        image_scale: -2\n")
    bad_spec("negative_number", "image_scale: -2", t, field="patients[0].slides[0].image_scale",
             needle="image_scale", msg="greater than 0")
    t = spec(GOOD_S1 + "        image_scale: .nan\n")
    bad_spec("nan_number", "image_scale: .nan", t, field="patients[0].slides[0].image_scale",
             needle="image_scale", msg="finite")
    t = spec(GOOD_S1, extra="model:\n  hidden: 1.0e+400\n")
    bad_spec("huge_number", "model.hidden: 1e400 (infinite)", t, field="model.hidden", needle="hidden",
             msg="integer")
    t = spec(GOOD_S1.replace("        spots: ../legacy/S1_selection.tsv\n", ""))
    bad_spec("missing_required", "a legacy_st slide without 'spots'", t, field="patients[0].slides[0].spots",
             needle="- id: S1", msg="required field is missing")
    t = spec(GOOD_S1.replace("reader: legacy_st", "reader: xenium"))
    bad_spec("unknown_reader", "reader: xenium", t, field="patients[0].slides[0].reader", needle="xenium",
             msg="unknown reader")
    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/S1.tsv.gz", patient="P1"))
    bad_spec("duplicate_patient_id", "two patients with id P1", t, field="patients[1].id", line=12,
             msg="duplicate patient id 'P1'")
    t = spec(GOOD_S1 + legacy_slide("S1", "../legacy/S1.tsv.gz"))
    bad_spec("duplicate_slide_id", "slide id S1 in two patients", t, field="patients[1].slides[0].id", line=14,
             msg="duplicate slide id 'S1'")
    t = spec(GOOD_S1.replace("        spots:", "        counts: ../legacy/S1.tsv.gz\n        spots:"))
    bad_spec("duplicate_key", "the same key twice in one slide (plain safe_load keeps the last silently)", t,
             field="patients[0].slides[0].counts", line=9, msg="duplicate key 'counts' (first at line 8)")
    t = spec(GOOD_S1).replace(b"name: bad-inputs", b"name: bad-inputs  # caf\xe9 (latin-1)")
    bad_spec("not_utf8", "a latin-1 byte in the YAML", t, field="<file>", line=1, msg="not UTF-8")
    t = spec(GOOD_S1).replace(b"name: bad-inputs", b"name: bad-\x07inputs")
    bad_spec("control_character", "a BEL control character", t, field="<yaml>", line=1, msg="U+0007")
    bad_spec("empty", "an empty file", b"", field="<root>", line=1, msg="empty")
    bad_spec("not_a_mapping", "a YAML list at the top", b"- a\n- b\n", field="<root>", line=1, msg="mapping")
    t = (b"name: bad-inputs\npatients:\n  - &p {id: P1, slides: [{id: S1, reader: h5ad, path: x.h5ad}], "
         b"extra: *p}\n")
    bad_spec("recursive_alias", "a patient that contains itself through an alias", t, field="<yaml>", line=3,
             msg="recursive")
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip("abcdef", "bcdefg")]
    t = ("\n".join(levels) + "\nname: bad-inputs\npatients: [*g]\n").encode()
    bad_spec("alias_bomb", "a 'billion laughs' alias bomb (10^7 values)", t, field="<yaml>", line=None,
             msg="expands to more than")
    t = spec(GOOD_S1.replace("../legacy/S1.tsv.gz", "\"\""))
    bad_spec("empty_path", "counts: '' (an empty path)", t, field="patients[0].slides[0].counts", line=8,
             msg="path is empty")
    t = spec(GOOD_S1, extra="paths:\n  confine_to_spec_dir: true\n")
    bad_spec("path_escape", "paths.confine_to_spec_dir: true and counts: ../legacy/S1.tsv.gz (outside the "
             "spec's folder)", t, field="patients[0].slides[0].counts", line=8, msg="outside the spec's folder")
    t = spec(GOOD_S1.replace("../legacy/S1.tsv.gz", "/etc/passwd"), extra="paths:\n  confine_to_spec_dir: true\n")
    bad_spec("path_absolute", "paths.confine_to_spec_dir: true and an absolute counts path", t,
             field="patients[0].slides[0].counts", line=8, msg="outside the spec's folder")
    t = spec(GOOD_S1, extra="model:\n  hidden: big\n")
    bad_spec("model_wrong_type", "model.hidden: 'big'", t, field="model.hidden", needle="hidden: big",
             msg="must be an integer")

    # ---- specs: valid spec, bad data (check_inputs / validate --strict)
    def data_spec(id, doc, text: bytes, *, slide, file, field, msg):
        rel = f"spec/{id}.yaml"
        case(id, "check_inputs", doc, args={"spec": rel}, slide=slide, file=file, field=field, text=msg,
             files={rel: text})

    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/counts_negative.tsv"))
    data_spec("one_bad_slide", "S1 is fine, S2's counts have a negative value: only S2 is named", t, slide="S2",
              file="counts_negative.tsv", field="patients[1].slides[0].counts", msg="negative")
    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/S2_missing.tsv.gz"))
    data_spec("missing_file", "S2's counts file does not exist", t, slide="S2", file="S2_missing.tsv.gz",
              field="patients[1].slides[0].counts", msg="file not found")
    t = spec(GOOD_S1, extra="clustering:\n  k: 40\n")
    data_spec("k_above_spots", "clustering.k: 40 but the cohort has 16 spots", t, slide=None, file=None,
              field="clustering.k", msg="k=40 regions but the 1 readable slide(s) have only 16 spots")
    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/S1.tsv.gz",
                                    more="        image: ../legacy/image_truncated.jpg\n"))
    data_spec("truncated_image", "S2's JPEG is cut in its pixel data (header fine)", t, slide="S2",
              file="image_truncated.jpg", field="patients[1].slides[0].image", msg="pixel data cannot be decoded")
    t = spec(GOOD_S1 + "  - id: P2\n    slides:\n      - {id: V1, reader: visium, path: ../visium/mtx_negative}\n")
    data_spec("visium_bad_slide", "a Visium slide whose matrix has a negative count", t, slide="V1",
              file="matrix.mtx", field="patients[1].slides[0].path", msg="negative")
    t = spec(GOOD_S1 + "  - id: P2\n    slides:\n      - {id: H1, reader: h5ad, path: ../h5/truncated.h5ad}\n")
    data_spec("h5ad_bad_slide", "a truncated .h5ad slide", t, slide="H1", file="truncated.h5ad",
              field="patients[1].slides[0].path", msg="cannot read")
