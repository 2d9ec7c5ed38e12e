"""Listing inputs from folders and from S3 (moto on loopback); stable ids; kinds by extension."""

import uuid
from pathlib import Path

import boto3
import pytest

from midiforge.pipeline.inputs import (
    TooLargeError,
    linked_pieces,
    list_files,
    list_inputs,
    piece_id,
    read_bytes,
)


def test_mixed_folder_under_both_flags(tmp_path):
    for name in ("a.wav", "b.mid", "c.txt", "d.FLAC", ".DS_Store"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "a.mid").write_bytes(b"m")
    inputs = list_inputs([str(tmp_path)], [str(tmp_path)], style="fiddle", style_from_folder=False,
                         tier_midi=1, reference_midi=[str(tmp_path / "refs")])  # fmt: skip
    kinds = {i.source_uri.rsplit("/", 1)[-1]: (i.kind, i.tier) for i in inputs}
    assert kinds == {"a.wav": ("audio", 2), "b.mid": ("midi", 1), "c.txt": ("unknown", 2),
                     "d.FLAC": ("audio", 2), "a.mid": ("midi", 1)}  # fmt: skip
    ref = next(i for i in inputs if i.source_uri.endswith("a.wav")).reference_uri
    assert ref.endswith("refs/a.mid")


def test_one_song_in_several_files_is_linked(tmp_path):
    """Linked: an audio file and its reference MIDI when that is an input too; files that
    differ only in extension in one folder. Not linked: the same name in another folder
    without a reference, or a reference that is not an input."""
    for rel in ("audio/fiddle/t1.wav", "audio/fiddle/t2.wav", "audio/fiddle/t3.wav",
                "midi/fiddle/t1.mid", "midi/fiddle/t2.mid", "mixed/s.flac", "mixed/s.mid",
                "mixed/s.ogg", "mixed/u.mid", "other/u.wav", "refs/t3.mid"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    inputs = list_inputs(
        [str(tmp_path / "audio"), str(tmp_path / "mixed"), str(tmp_path / "other")],
        [str(tmp_path / "midi"), str(tmp_path / "mixed")],
        style="fiddle", style_from_folder=False, tier_midi=1,
        reference_midi=[str(tmp_path / "refs"), str(tmp_path / "midi")],
    )  # fmt: skip
    rel = {i.piece_id: str(Path(i.source_uri).relative_to(tmp_path)) for i in inputs}
    groups: dict[str, set[str]] = {}
    for p, g in linked_pieces(inputs).items():
        groups.setdefault(g, set()).add(rel[p])
    assert sorted(map(sorted, groups.values())) == [
        ["audio/fiddle/t1.wav", "midi/fiddle/t1.mid"],
        ["audio/fiddle/t2.wav", "midi/fiddle/t2.mid"],
        ["mixed/s.flac", "mixed/s.mid", "mixed/s.ogg"],
    ]
    # a group's id is its smallest piece_id, so it does not depend on the listing order
    assert all(g == min(p for p, h in linked_pieces(inputs).items() if h == g) for g in groups)
    assert linked_pieces(list(reversed(inputs))) == linked_pieces(inputs)


def test_references_sharing_a_name_go_by_folder_and_paths_are_normalised(
    tmp_path, monkeypatch, caplog
):
    """Style folders a/ and b/ each holding t1: each recording gets its own folder's MIDI
    (the first t1.mid found used to be every t1's reference, and b's song split apart
    from its MIDI). `..` in a path names the same file, with one piece_id."""
    for rel in ("audio/a/t1.wav", "audio/b/t1.wav", "audio/c/t1.wav", "midi/a/t1.mid",
                "midi/b/t1.mid", "proj/x.mid"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="midiforge.pipeline.inputs"):
        inputs = list_inputs(
            [str(tmp_path / "audio")], [str(tmp_path / "midi")], style=None,
            style_from_folder=True, tier_midi=3, reference_midi=[str(tmp_path / "midi")],
        )  # fmt: skip
    refs = {
        str(Path(i.source_uri).relative_to(tmp_path)): i.reference_uri
        and str(Path(i.reference_uri).relative_to(tmp_path))
        for i in inputs
        if i.kind == "audio"
    }
    assert refs == {"audio/a/t1.wav": "midi/a/t1.mid", "audio/b/t1.wav": "midi/b/t1.mid",
                    "audio/c/t1.wav": ""}  # fmt: skip
    assert "audio/c/t1.wav has no reference MIDI: 2 MIDI files share its stem" in caplog.text
    groups = linked_pieces(inputs)
    by_rel = {str(Path(i.source_uri).relative_to(tmp_path)): i.piece_id for i in inputs}
    assert groups[by_rel["audio/b/t1.wav"]] == groups[by_rel["midi/b/t1.mid"]]
    assert groups[by_rel["audio/a/t1.wav"]] != groups[by_rel["audio/b/t1.wav"]]

    monkeypatch.chdir(tmp_path / "proj")
    [up] = list_inputs([], ["../proj"], style="x", style_from_folder=False, tier_midi=3)
    [here] = list_inputs([], ["."], style="x", style_from_folder=False, tier_midi=3)
    assert up.source_uri == here.source_uri == str(tmp_path / "proj" / "x.mid")
    assert up.piece_id == here.piece_id


def test_midi_among_audio_only_is_unknown(tmp_path):
    (tmp_path / "x.mid").write_bytes(b"x")
    [i] = list_inputs([str(tmp_path)], [], style=None, style_from_folder=True, tier_midi=3)
    assert i.kind == "unknown"
    assert i.style == tmp_path.name


def test_piece_ids_are_stable_and_distinct():
    assert piece_id("/a/b.wav") == piece_id("/a/b.wav")
    assert piece_id("/a/b.wav") != piece_id("/a/c.wav")
    assert len(piece_id("s3://x/y.wav")) == 16


def test_listing_and_reading_from_s3(s3_env):
    bucket = f"in-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_env}")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="tracks/fiddle/one.wav", Body=b"RIFF-one")
    s3.put_object(Bucket=bucket, Key="tracks/folk/two.mid", Body=b"MThd-two")
    root = f"s3://{bucket}/tracks?endpoint_override={s3_env}&scheme=http&region=us-east-1"
    inputs = list_inputs([root], [root], style=None, style_from_folder=True, tier_midi=3)
    by_name = {i.source_uri.split("?")[0].rsplit("/", 1)[-1]: i for i in inputs}
    assert set(by_name) == {"one.wav", "two.mid"}
    assert by_name["one.wav"].style == "fiddle" and by_name["two.mid"].style == "folk"
    assert by_name["one.wav"].source_uri.startswith(f"s3://{bucket}/tracks/fiddle/one.wav?")
    assert read_bytes(by_name["two.mid"].source_uri) == b"MThd-two"


def test_symlinked_files_keep_their_own_paths(tmp_path):
    target = tmp_path / "real.wav"
    target.write_bytes(b"x")
    (tmp_path / "links").mkdir()
    for name in ("a.wav", "b.wav"):
        (tmp_path / "links" / name).symlink_to(target)
    inputs = list_inputs(
        [str(tmp_path / "links")], [], style="x", style_from_folder=False, tier_midi=3
    )
    assert sorted(i.source_uri.rsplit("/", 1)[-1] for i in inputs) == ["a.wav", "b.wav"]
    assert len({i.piece_id for i in inputs}) == 2


def test_file_uris_list_and_read_back(tmp_path):
    (tmp_path / "fiddle").mkdir()
    files = {"fiddle/one.wav": b"RIFF-one", "two 100%.mid": b"MThd-two"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = list_files(f"file://{tmp_path}")
    assert uris == [f"file://{tmp_path}/{name}" for name in sorted(files)]
    assert [read_bytes(u) for u in uris] == [files[name] for name in sorted(files)]
    one = f"file://{tmp_path}/fiddle/one.wav"
    assert list_files(one) == [one]
    inputs = list_inputs([f"file://{tmp_path}"], [f"file://{tmp_path}"], style=None,
                         style_from_folder=True, tier_midi=3)  # fmt: skip
    assert {(i.kind, i.style) for i in inputs} == {("audio", "fiddle"), ("midi", tmp_path.name)}


def test_a_file_over_max_bytes_is_refused_before_reading(tmp_path):
    (tmp_path / "big.wav").write_bytes(b"x" * 1000)
    for uri in (str(tmp_path / "big.wav"), f"file://{tmp_path}/big.wav"):
        with pytest.raises(TooLargeError, match="1000 bytes > maximum 999 bytes"):
            read_bytes(uri, max_bytes=999)
        assert read_bytes(uri, max_bytes=1000) == b"x" * 1000
