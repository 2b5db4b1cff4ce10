"""The kernel cache loads only what this user wrote, and a build for one CPU is never found on another."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from aha.kernels import build, layer_kernels

SOURCE = layer_kernels.SOURCE
needs_compiler = pytest.mark.skipif(build.find_compiler() is None, reason="no C compiler on PATH (set CC)")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AHA_CACHE_DIR", str(tmp_path))
    return tmp_path / "kernels"


def _load(caplog) -> object:
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        return build.load_library(SOURCE, "layer kernels", "training uses torch ops")


def test_a_world_writable_cache_directory_is_refused_with_the_reason(cache, caplog):
    cache.mkdir()
    cache.chmod(0o777)
    assert _load(caplog) is None
    assert f"cache directory {cache} is writable by others" in caplog.text
    assert "chmod go-w" in caplog.text
    assert not list(cache.glob("*.so"))  # nothing built or loaded there


def test_a_group_writable_cache_directory_is_refused(cache, caplog):
    cache.mkdir()
    cache.chmod(0o770)
    assert _load(caplog) is None
    assert "is writable by its group" in caplog.text


def test_a_cache_directory_owned_by_another_user_is_refused(cache, caplog, monkeypatch):
    cache.mkdir(mode=0o700)
    real_stat = os.stat

    def stat_with_a_foreign_directory(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        if Path(path) == cache:  # as if another uid had made the cache directory
            return os.stat_result(
                (info.st_mode, info.st_ino, info.st_dev, info.st_nlink, os.getuid() + 1, *tuple(info)[5:10])
            )
        return info

    monkeypatch.setattr(build.os, "stat", stat_with_a_foreign_directory)
    assert _load(caplog) is None
    assert f"cache directory {cache} is owned by uid {os.getuid() + 1}, not this user" in caplog.text
    assert not list(cache.glob("*.so"))  # nothing built or loaded there


@needs_compiler
def test_a_fresh_build_is_private_and_loads(cache, caplog):
    assert _load(caplog) is not None
    (library,) = cache.glob("*.so")
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)
    assert library.stat().st_mode & 0o022 == 0


@needs_compiler
def test_a_cached_library_owned_by_another_user_is_refused(cache, caplog, monkeypatch):
    assert _load(caplog) is not None  # built and cached by this user
    real_stat = os.stat

    def stat_with_foreign_libraries(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        if str(path).endswith(".so"):  # as if another uid had written the cached library
            return os.stat_result(
                (info.st_mode, info.st_ino, info.st_dev, info.st_nlink, os.getuid() + 1, *tuple(info)[5:10])
            )
        return info

    monkeypatch.setattr(build.os, "stat", stat_with_foreign_libraries)
    assert _load(caplog) is None
    assert f"is owned by uid {os.getuid() + 1}, not this user" in caplog.text


@needs_compiler
def test_a_group_writable_cached_library_is_refused(cache, caplog):
    assert _load(caplog) is not None
    (library,) = cache.glob("*.so")
    library.chmod(0o775)
    assert _load(caplog) is None
    assert f"cached library {library} is writable by its group" in caplog.text


def test_the_cache_key_follows_the_cpu_instruction_set(tmp_path, monkeypatch):
    avx2 = tmp_path / "avx2"
    avx2.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2 avx avx2 fma\n")
    avx512 = tmp_path / "avx512"
    avx512.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n")
    signatures = {name: build.cpu_signature(path) for name, path in (("avx2", avx2), ("avx512", avx512))}
    assert "avx512f" in signatures["avx512"] and "avx512f" not in signatures["avx2"]
    keys = {}
    for name, signature in signatures.items():
        monkeypatch.setattr(build, "cpu_signature", lambda signature=signature: signature)
        keys[name] = build.cache_key(SOURCE, "cc 1.0")
    assert keys["avx2"] != keys["avx512"]
    assert build.cache_key(SOURCE, "cc 1.0") == keys["avx512"]  # and is stable for one CPU
