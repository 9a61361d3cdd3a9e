"""Results of a run: targets checked, ``latest.md`` (tables), ``latest.json`` (every figure), PNG charts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

MIB = 1024 * 1024
PEER_STEPS = ("fresh", "unchanged", "edit_10x4k", "insert_front_1b", "append_1m")


def _get(data: dict, *keys: object) -> object:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: object, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and unit == "B":
        return _bytes(value)
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"
    return str(value)


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,} B"


# ---- targets -------------------------------------------------------------------------------------


def _target(name: str, value: str, goal: str, met: bool | None, note: str = "") -> dict:
    return {"target": name, "measured": value, "goal": goal, "met": met, "note": note}


def _ratio_target(name: str, ours: float | None, theirs: float | None, factor: float, higher_better: bool,
                  fmt: Callable[[float], str]) -> dict:
    if ours is None or theirs is None:
        return _target(name, "n/a", "", None, "peer not measured")
    ratio = ours / theirs if theirs else (1.0 if not ours else float("inf"))
    if higher_better:
        return _target(name, f"{fmt(ours)} vs {fmt(theirs)} ({ratio:.2f}x)", f">= {factor:g}x", ratio >= factor)
    return _target(name, f"{fmt(ours)} vs {fmt(theirs)} ({ratio:.2f}x)", f"<= {factor:g}x", ratio <= factor)


def evaluate(results: dict) -> list[dict]:
    """Every target of the benchmark brief that this run measured, met or not."""
    g = {name: group for name, group in results.get("groups", {}).items() if "error" not in group}
    out = []
    t = _get(g, "transfer", "summary")
    if t:
        out.append(_target("upload MB/s (mTLS, mixed)", _fmt(t["upload_mb_per_s"]), ">= 150",
                           t["upload_mb_per_s"] >= 150))
        out.append(_target("download MB/s (mTLS, mixed)", _fmt(t["download_mb_per_s"]), ">= 250",
                           t["download_mb_per_s"] >= 250))
        for way in ("upload", "download"):
            cost = t[f"tls_cost_{way}_pct"]
            out.append(_target(f"TLS cost, {way}", _fmt(cost, "%"), "< 15%", cost < 15))
    lat = _get(g, "latency")
    if lat:
        one = next((lv for lv in lat["levels"] if lv["method"] == "Stat" and lv["clients"] == 1), None)
        if one:
            out.append(_target("Stat p50 at 1 client", _fmt(one.get("p50_ms"), "ms", 2), "< 1 ms",
                               one.get("p50_ms", 1e9) < 1))
        w = lat["watch"]
        ok = w["error_count"] == 0 and w["events_received"] >= w["events_expected"]
        out.append(_target(f"{w['watchers']} Watch streams + {w['active_clients']} active clients",
                           f"{w['error_count']} errors, {w['events_received']}/{w['events_expected']} events",
                           "0 errors, all events", ok))
    mem = _get(g, "memory")
    if mem:
        size = f"{mem['size'] // MIB} MiB file"
        out.append(_target(f"server peak RSS ({size})", _fmt(mem["server_peak_mib"], "MiB", 0), "< 300 MiB",
                           mem["server_peak_mib"] < 300))
        out.append(_target(f"client peak RSS ({size})", _fmt(mem["client_peak_mib"], "MiB", 0), "< 300 MiB",
                           mem["client_peak_mib"] < 300))
    fl = _get(g, "flood")
    if fl:
        out.append(_target("Stat p99 of another identity under a flood", _fmt(fl["flooded"].get("p99_ms"), "ms", 2),
                           f"< {fl['target_p99_ms']:g} ms", fl["target_met"]))
    peers = _get(g, "peers")
    if peers:
        out += _peer_targets(peers)
    for name in ("peers", "get_over_old"):
        if _get(g, name, "get_over_old"):
            out += _get_over_old_targets(g[name])
    history = _get(g, "history")
    if history:
        out += _history_targets(history)
    out += _gc_targets(g)
    sy = _get(g, "sync")
    if sy and "error" not in sy:
        out += _sync_targets(sy)  # type: ignore[arg-type]
    st = _get(g, "startup")
    if st:
        for key, what in (("help", "stratus --help"), ("stat", "stratus stat")):
            ms = st[key]["median_ms"]
            out.append(_target(f"{what} wall time (median of {st[key]['runs']})", _fmt(ms, "ms"),
                               f"< {st['target_ms']:g} ms", ms < st["target_ms"]))
    return out


def _gc_targets(g: dict) -> list[dict]:
    out = []
    gc = _get(g, "gc")
    if gc:
        out.append(_target("upload throughput during gc vs without", _fmt(gc["upload_ratio_during_gc"], "x", 2),
                           ">= 0.7", gc["upload_ratio_during_gc"] >= 0.7))
        out.append(_target("gc: bytes freed / bytes of forgotten-only chunks",
                           f"{_bytes(gc['freed_bytes'])} / {_bytes(gc['expected_freed_bytes'])}",
                           "(comparison; kept versions identical, check clean: "
                           f"{gc['restored_identical'] and gc['check_clean']})", None))
        if "restic_prune_seconds" in gc:
            out.append(_target("gc time vs restic forget --prune", f"{gc['gc_seconds']:.1f} s vs "
                               f"{gc['restic_prune_seconds']:.1f} s", "(comparison)", None))
    stress = _get(g, "gc_stress")
    if stress:
        out.append(_target(f"gc_stress: {stress['cycles']} collections, {stress['versions_written']} versions",
                           f"{len(stress['writer_errors'])} writer errors, {len(stress['mismatches'])} mismatches, "
                           f"check {tuple(stress['check'])}", "0, 0, clean", stress["ok"]))
    return out


def _bytes_target(name: str, ours: object, theirs: object, factor: float) -> dict:
    return _ratio_target(name, ours, theirs, factor, False, lambda v: _bytes(int(v)))  # type: ignore[arg-type]


def _disk_targets(label: str, runs: dict) -> list[dict]:
    """On-disk (allocated, ``du``) bytes of a real history <= 0.6x borg's and restic's; the
    history put file by file through the CLI faster than borg."""
    out = [_bytes_target(f"bytes on disk (allocated), {label}, vs {peer}", _get(runs, "stratusvault", "allocated"),
                         _get(runs, peer, "allocated"), 0.6) for peer in ("borg", "restic")]
    out.append(_ratio_target(f"{label} put file by file (CLI) time vs borg", _get(runs, "stratusvault", "seconds"),
                             _get(runs, "borg", "seconds"), 1.0, False, lambda v: f"{v:.2f} s"))
    return out


def _peer_targets(p: dict) -> list[dict]:
    out = _disk_targets("flask history", p.get("versions", {}))
    for step in PEER_STEPS[2:]:
        out.append(_bytes_target(f"bytes sent, {step}, vs rsync -z total bytes sent",
                                 _get(p, "mixed", "stratusvault", step, "bytes"),
                                 _get(p, "mixed", "rsync-z", step, "bytes"), 1.0))
    out.append(_bytes_target("bytes sent, flask history (versions 2..n), vs rsync -z total bytes sent",
                             _get(p, "versions", "stratusvault", "delta_bytes_total"),
                             _get(p, "versions", "rsync-z", "delta_bytes_total"), 1.0))
    for peer in ("restic", "borg"):
        for what, key in (("fresh upload", "fresh"), ("restore", "restore")):
            out.append(_ratio_target(f"{what} MB/s (CLI process) vs {peer}",
                                     _get(p, "mixed", "stratusvault", key, "mb_per_s"),
                                     _get(p, "mixed", peer, key, "mb_per_s"), 1.5, True, lambda v: f"{v:.0f} MB/s"))
    files = p.get("tree_files", "n/a")
    out.append(_ratio_target(f"first push of the tree ({files} files) time vs restic",
                             _get(p, "tree", "stratusvault", "fresh", "seconds"),
                             _get(p, "tree", "restic", "fresh", "seconds"), 1.0, False, lambda v: f"{v:.2f} s"))
    unchanged = _get(p, "tree", "stratusvault", "unchanged", "seconds")
    out.append(_target("unchanged tree re-push (CLI)", _fmt(unchanged, "s", 2), "< 1 s",
                       None if unchanged is None else unchanged < 1.0))
    return out


def _get_over_old_targets(p: dict) -> list[dict]:
    """A download over an old copy after 10 scattered 4 KiB edits moves fewer bytes than rsync -z."""
    runs = p["get_over_old"]
    return [_bytes_target(f"get over the old copy after 10 x 4 KiB edits: bytes received vs {peer} total bytes sent",
                          _get(runs, "stratusvault", "edit_10x4k", "bytes"), _get(runs, peer, "edit_10x4k", "bytes"),
                          1.0) for peer in ("rsync-z", "stratusvault-plain")]


def _get_over_old_md(p: dict) -> list[str]:
    runs = p["get_over_old"]
    names = [n for n in p["get_peers"] if n in runs]
    lines = [f"## Get over an old copy ({_bytes(p['mixed_size'])} mixed file)", "",
             "The client holds version 1, version 2 (10 scattered 4 KiB overwrites) is pushed, then fetched over "
             "the old copy. Bytes: StratusVault = every protocol message byte the CLI received (`stratus get`; "
             "`stratusvault-plain`: a server with delta_downloads off, i.e. before delta downloads); rsync = "
             "\"Total bytes sent\" by the side holding version 2 (`--no-whole-file`). \"All protocol bytes\" adds "
             "the other direction (our requests; rsync's block checksums).", ""]
    rows = [["first get (empty folder): bytes"] + [_bytes(_get(runs, n, "full", "bytes")) for n in names]]
    count: Callable[[object], str] = lambda v: _fmt(v, "", 0)  # noqa: E731
    for label, key, fmt in (("seconds", "seconds", lambda v: _fmt(v, "", 2)), ("bytes", "bytes", _bytes),
                            ("all protocol bytes, both ways", "all_traffic", _bytes),
                            ("chunks fetched", "cli_chunks_fetched", count),
                            ("of which deltas", "cli_chunks_delta", count),
                            ("rsync literal data", "literal_data", _bytes), ("identical", "identical", _fmt),
                            ("CPU s other processes used meanwhile", "others_cpu", _fmt)):
        rows.append([f"edit_10x4k: {label}"] + [fmt(_get(runs, n, "edit_10x4k", key)) for n in names])
    return lines + _table(["get over old"] + names, rows)


def _history_targets(h: dict) -> list[dict]:
    project = str(h.get("source", "")).removeprefix("pypi:").split(" ")[0] or "big"
    runs = h.get("history", {})
    out = _disk_targets(f"{project} history", runs)
    # A/B in the same run: the same server with delta hints off stores every chunk whole.
    out.append(_bytes_target(f"bytes on disk (allocated), {project} history, delta hints on vs off",
                             _get(runs, "stratusvault", "allocated"), _get(runs, "stratusvault-nohints", "allocated"),
                             1.0))
    return out


# ---- charts ----------------------------------------------------------------------------------------


def draw_all(results: dict, out: Path) -> list[str]:
    """PNG charts of the groups that ran; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    g = results["groups"]
    drawn = []
    for name, draw in (("transfer", _chart_transfer), ("latency", _chart_latency), ("memory", _chart_memory),
                       ("peers", _chart_peers)):
        if name in g and "error" not in g[name]:
            fig = draw(plt, g[name])
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=110)
            plt.close(fig)
            drawn.append(f"{name}.png")
    return drawn


def _chart_transfer(plt: object, t: dict) -> object:
    s = t["summary"]
    fig, ax = plt.subplots(figsize=(7, 4))  # type: ignore[attr-defined]
    labels = ["upload", "download"]
    tls = [s["upload_mb_per_s"], s["download_mb_per_s"]]
    plain = [s["upload_plain_mb_per_s"], s["download_plain_mb_per_s"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], tls, 0.4, label="mTLS")
    ax.bar([x + 0.2 for x in xs], plain, 0.4, label="plaintext")
    for x, goal in zip(xs, (150, 250), strict=True):
        ax.hlines(goal, x - 0.45, x + 0.45, colors="red", linestyles="dashed")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("MB/s")
    ax.set_title(f"Transfer of {_bytes(s['size'])} over loopback (dashed: target)")
    ax.legend()
    return fig


def _chart_latency(plt: object, lat: dict) -> object:
    fig, ax = plt.subplots(figsize=(7, 4))  # type: ignore[attr-defined]
    for method in ("Stat", "ListFiles"):
        levels = [lv for lv in lat["levels"] if lv["method"] == method and lv.get("count")]
        clients = [lv["clients"] for lv in levels]
        ax.plot(clients, [lv["p50_ms"] for lv in levels], marker="o", label=f"{method} p50")
        ax.plot(clients, [lv["p99_ms"] for lv in levels], marker="x", linestyle="--", label=f"{method} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("ms")
    ax.set_title("Metadata call latency (mTLS)")
    ax.legend()
    return fig


def _chart_memory(plt: object, m: dict) -> object:
    fig, ax = plt.subplots(figsize=(7, 4))  # type: ignore[attr-defined]
    times = [row[0] for row in m["timeline"]]
    ax.plot(times, [row[2] for row in m["timeline"]], label="server RSS")
    ax.plot(times, [row[3] for row in m["timeline"]], label="client RSS")
    ax.axhline(300, color="red", linestyle="dashed", label="limit")
    switch = next((row[0] for row in m["timeline"] if row[1] in ("download", "done")), None)
    if switch is not None:
        ax.axvline(switch, color="gray", linestyle="dotted", label="upload | download")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title(f"RSS while moving {_bytes(m['size'])} up, then down")
    ax.legend()
    return fig


def _chart_peers(plt: object, p: dict) -> object:
    names = [n for n in p["peers"] if n in p["mixed"]]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))  # type: ignore[attr-defined]
    panels = (
        (axes[0][0], "fresh upload MB/s (mixed)", [_get(p, "mixed", n, "fresh", "mb_per_s") for n in names], False),
        (axes[0][1], "restore MB/s (mixed)", [_get(p, "mixed", n, "restore", "mb_per_s") for n in names], False),
        (axes[1][0], "MiB on disk (allocated), all versions",
         [(_get(p, "versions", n, "allocated") or 0) / MIB for n in names], False),
        (axes[1][1], "bytes per 10x4 KiB edit (log)", [_get(p, "mixed", n, "edit_10x4k", "bytes") for n in names],
         True),
    )
    for ax, title, values, log in panels:
        colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
        ax.bar(names, [v or 0 for v in values], color=colors[: len(names)])
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    return fig


# ---- markdown -------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _cpu(cpu: dict | None) -> str:
    if not cpu:
        return "n/a"
    return f"{cpu['server_cpu']:.1f} / {cpu['client_cpu']:.1f} / {cpu['valkey_cpu']:.1f} / {cpu['others_cpu']:.1f}"


def _transfer_md(t: dict) -> list[str]:
    s = t["summary"]
    lines = [f"## Transfer (loopback gRPC, {_bytes(s['size'])} mixed file)", ""]
    lines += _table(["", "mTLS MB/s", "plaintext MB/s", "TLS cost"], [
        ["upload (fresh)", _fmt(s["upload_mb_per_s"]), _fmt(s["upload_plain_mb_per_s"]),
         _fmt(s["tls_cost_upload_pct"], "%")],
        ["download (to a new file)", _fmt(s["download_mb_per_s"]), _fmt(s["download_plain_mb_per_s"]),
         _fmt(s["tls_cost_download_pct"], "%")],
    ])
    if len(t["rounds"]) > 1:
        lines += [f"Best of {len(t['rounds'])} rounds (fresh servers each); every round is in latest.json.", ""]
    r = t["rounds"][0]
    rows = []
    for key, label in (("upload_tls", "fresh upload"), ("download_tls", "download"),
                       ("reupload_unchanged", "re-upload, unchanged"), ("edit_10x4k", "10 scattered 4 KiB edits"),
                       ("insert_front_1b", "1-byte insertion at the front"), ("append_1m", "1 MiB append"),
                       ("delta_download", "delta download (latest onto v1 copy)")):
        m = r.get(key)
        if not m:
            continue
        chunks = f"{m['chunks_sent']}/{m['chunks_total']} sent" if "chunks_sent" in m else \
            f"{m['chunks_fetched']} fetched, {m['chunks_reused']} reused"
        rows.append([label, _fmt(m["seconds"], "s", 2), _fmt(m["mb_per_s"], "", 0), _bytes(m["wire_sent"]),
                     _bytes(m["wire_received"]), chunks, _cpu(m.get("cpu"))])
    lines += ["mTLS server, first round. Bytes are serialised protobuf messages (every RPC, both ways).", ""]
    lines += _table(["operation", "time", "MB/s", "bytes sent", "bytes received", "chunks",
                     "CPU s server / client / valkey / others"], rows)
    return lines


def _latency_md(lat: dict) -> list[str]:
    lines = [f"## Latency (mTLS, {lat['files']} files; client and server share the machine)", ""]
    rows = [[lv["method"] + (" (gRPC floor)" if lv["method"] == "HealthCheck" else ""), lv["clients"],
             _fmt(lv.get("p50_ms"), "", 2), _fmt(lv.get("p99_ms"), "", 2), _fmt(lv.get("max_ms"), "", 1),
             _fmt(lv["calls_per_s"], "", 0), sum(lv["errors"].values())] for lv in lat["levels"]]
    lines += _table(["call", "clients", "p50 ms", "p99 ms", "max ms", "calls/s", "errors"], rows)
    lines += [f"{lat['connections']} connections opened (mTLS handshakes) in {lat['connect_seconds']:.1f} s before "
              "the first level; each level runs for a fixed time after one warm-up call per client.", ""]
    w = lat["watch"]
    d, a = w["delivery"], w["active_calls"]
    lines += _table(["Watch test", "value"], [
        ["Watch streams open", f"{w['opened']} (10 per connection)"],
        ["active clients (Stat 70% / ListFiles 30%)", w["active_clients"]],
        ["commits during the test", w["commits"]],
        ["events delivered / expected", f"{w['events_received']} / {w['events_expected']}"],
        ["errors", f"{w['error_count']} {w['errors'] or ''}"],
        ["commit-to-delivery p50 / p99", f"{_fmt(d.get('p50_ms'), 'ms')} / {_fmt(d.get('p99_ms'), 'ms')}"],
        ["active clients' call p50 / p99", f"{_fmt(a.get('p50_ms'), 'ms')} / {_fmt(a.get('p99_ms'), 'ms')}"],
    ])
    return lines


def _memory_md(m: dict) -> list[str]:
    lines = [f"## Memory ({_bytes(m['size'])} streamed up and down, RSS sampled every 50 ms)", ""]
    rows = []
    for who in ("server", "client", "valkey"):
        base = m.get(f"{who}_baseline_mib")
        rows.append([who, _fmt(base, "MiB", 0) if base is not None else "n/a",
                     _fmt(m[f"{who}_upload_peak_mib"], "MiB", 0), _fmt(m[f"{who}_download_peak_mib"], "MiB", 0),
                     _fmt(m[f"{who}_peak_mib"], "MiB", 0)])
    lines += _table(["process", "before", "peak, upload", "peak, download", "peak"], rows)
    lines += [f"Upload {_fmt(m['upload_mb_per_s'])} MB/s, download {_fmt(m['download_mb_per_s'])} MB/s "
              f"(the client also generates the data).", ""]
    return lines


def _history_rows(runs: dict, names: list[str]) -> list[list[str]]:
    """Rows of a version history table: logical size, bytes on disk, bytes moved, time."""
    return [["logical bytes"] + [_bytes(_get(runs, n, "logical")) for n in names],
            ["on disk, apparent (du -sb)"] + [_bytes(_get(runs, n, "stored")) for n in names],
            ["on disk, allocated (du -sB1, folders included)"] + [_bytes(_get(runs, n, "allocated")) for n in names],
            ["bytes sent/added, versions 2..n"] + [_bytes(_get(runs, n, "delta_bytes_total")) for n in names],
            ["all protocol bytes, versions 2..n"] + [_bytes(_get(runs, n, "delta_traffic_total")) for n in names],
            ["seconds, all versions (process per put)"] + [_fmt(_get(runs, n, "seconds"), "", 2) for n in names],
            ["CPU s other processes used meanwhile"] + [_fmt(_get(runs, n, "others_cpu"), "", 1) for n in names]]


def _peers_md(p: dict) -> list[str]:
    names = [n for n in p["peers"] if n in p["mixed"] or n in p["versions"] or n in p["tree"]]
    versions = " ".join(f"{n} {p['tool_versions'].get(n, '')}" for n in names)
    lines = [f"## Peers ({versions})", ""]
    lines += [f"`mixed` file: {_bytes(p['mixed_size'])}. Every tool runs as a process, as a user runs it "
              "(StratusVault: `stratus put`/`stratus get`, the server started once). Bytes: StratusVault = every "
              "protocol message byte the CLI sent (chunks, digest queries, ListFiles walk, manifests, commits); "
              "restic, borg = repository growth (apparent); rsync, rsync -z = \"Total bytes sent\" of --stats "
              "(literal data, compressed with -z, plus block references). \"All protocol bytes\" adds what came "
              "back (rsync: block checksums).", ""]
    rows = []
    mixed = p["mixed"]
    rows.append(["fresh upload MB/s"] + [_fmt(_get(mixed, n, "fresh", "mb_per_s"), "", 0) for n in names])
    for step in PEER_STEPS:
        rows.append([f"{step}: seconds"] + [_fmt(_get(mixed, n, step, "seconds"), "", 2) for n in names])
        rows.append([f"{step}: bytes"] + [_bytes(_get(mixed, n, step, "bytes")) for n in names])
        rows.append([f"{step}: all protocol bytes, both ways"]
                    + [_bytes(_get(mixed, n, step, "all_traffic")) for n in names])
        rows.append([f"{step}: rsync literal data"] + [_bytes(_get(mixed, n, step, "literal_data")) for n in names])
        rows.append([f"{step}: CPU s other processes used meanwhile"]
                    + [_fmt(_get(mixed, n, step, "others_cpu"), "", 1) for n in names])
    rows.append(["restore MB/s"] + [_fmt(_get(mixed, n, "restore", "mb_per_s"), "", 0) for n in names])
    rows.append(["restored file identical"] + [_fmt(_get(mixed, n, "restore", "identical")) for n in names])
    rows.append(["restore: CPU s other processes used meanwhile"]
                + [_fmt(_get(mixed, n, "restore", "others_cpu"), "", 1) for n in names])
    lines += _table(["mixed"] + names, rows)
    ip = p.get("in_process")
    if ip:
        def figure(step: str) -> str:
            m = ip[step]
            return (f"{_fmt(m['mb_per_s'], 'MB/s', 0)} ({_fmt(m['seconds'], 's', 2)}; other processes' CPU "
                    f"{_fmt(m.get('others_cpu'), 's')})")

        lines += ["StratusVault **in-process** (client library in the bench process, warm mTLS channel, a server "
                  "of its own; not comparable with the process timings above): fresh upload "
                  f"{figure('fresh')}, restore {figure('restore')}, identical: {_fmt(ip['restore']['identical'])}.", ""]
    lines += [f"`versions`: {p['versions_source']}, put file by file (one process per release).", ""]
    lines += _table(["versions"] + names, _history_rows(p["versions"], names))
    tr = p["tree"]
    lines += [f"`tree`: {p['tree_files']} files, {_bytes(p['tree_bytes'])}; StratusVault through the CLI "
              "(`stratus put DIR REMOTE`); every command is a new process; bytes as above (ours include the "
              "ListFiles walk, manifests and commits).", ""]
    rows = []
    for step in ("fresh", "unchanged", "changed_1pct"):
        rows.append([f"{step}: seconds"] + [_fmt(_get(tr, n, step, "seconds"), "", 2) for n in names])
        rows.append([f"{step}: bytes"] + [_bytes(_get(tr, n, step, "bytes")) for n in names])
        rows.append([f"{step}: all protocol bytes, both ways"]
                    + [_bytes(_get(tr, n, step, "all_traffic")) for n in names])
        rows.append([f"{step}: CPU s other processes used meanwhile"]
                    + [_fmt(_get(tr, n, step, "others_cpu"), "", 1) for n in names])
    lines += _table(["tree"] + names, rows)
    if p.get("get_over_old"):
        lines += _get_over_old_md(p)
    return lines


def _history_md(h: dict) -> list[str]:
    names = [n for n in h["peers"] if n in h["history"]]
    versions = " ".join(f"{n} {h['tool_versions'].get(n, '')}" for n in names)
    lines = [f"## History: {h['source']} ({versions})", "",
             "Every release in turn as the same file name, one process per put (StratusVault: `stratus put`). "
             "On disk = the whole data dir / repository as `du` sees it.", ""]
    return lines + _table(["history"] + names, _history_rows(h["history"], names))


def _startup_md(s: dict) -> list[str]:
    from bench.startup import summary_lines

    return ["## CLI start-up (fresh process per run)", "", "```", *summary_lines(s), "```", ""]


def _sync_md(s: dict) -> list[str]:
    from bench.sync import summary

    return ["## Sync daemon (two `stratus sync --watch` processes, one server)", "", "```", *summary(s), "```", ""]


def _sync_targets(s: dict) -> list[dict]:
    t = s["targets"]
    p50 = s["small"]["p50_ms"] / 1000
    resync = s["tree"]["resync_process_s"]
    cpu = s["idle"]["cpu_share"]
    return [
        _target("sync: small file A->B p50", _fmt(p50 * 1000, "ms"), f"< {t['small_p50_s'] * 1000:g} ms",
                p50 < t["small_p50_s"]),
        _target(f"sync: idle daemon CPU ({s['idle']['files']} files)", _fmt(cpu * 100, "%", 2),
                f"< {t['idle_cpu'] * 100:g} %", cpu < t["idle_cpu"]),
        _target(f"sync: unchanged re-sync of {s['tree']['files']} files (process)", _fmt(resync, "s", 2),
                f"< {t['resync_s']:g} s", resync < t["resync_s"]),
    ]


def _check_md(c: dict) -> list[str]:
    names = list(c["stored_bytes"])
    lines = [f"## Store check ({_bytes(c['logical_bytes'])} logical; restic {c.get('restic_version', 'absent')})", "",
             "Each check as a process, the fastest of the rounds; MB/s of the file's size and of the bytes "
             "stored (packs; restic's data folder).", ""]
    rows = [["stored bytes"] + [_bytes(c["stored_bytes"][n]) for n in names]]
    for kind, label in (("check", "check"), ("check_read_data", "check --read-data")):
        rows.append([f"{label}: seconds"] + [_fmt(c[f"{n}_{kind}"]["seconds"], "", 2) for n in names])
        rows.append([f"{label}: MB/s logical"] + [_fmt(c[f"{n}_{kind}"]["logical_mb_per_s"], "", 0) for n in names])
        rows.append([f"{label}: MB/s stored"] + [_fmt(c[f"{n}_{kind}"]["stored_mb_per_s"], "", 0) for n in names])
    return lines + _table(["check"] + names, rows)


def markdown(results: dict) -> str:
    """The whole report as Markdown."""
    meta = results["meta"]
    lines = ["# StratusVault benchmarks", "",
             f"{meta['started']} · mode **{meta['mode']}** · {meta['cpus']} CPUs ({meta['cpu_model']}) · "
             f"Python {meta['python']} · commit {meta['commit']} · {meta['seconds']:.0f} s in total", "",
             f"Command: `{meta['command']}`", ""]
    if meta.get("other_cpus"):
        load = ", ".join(f"{name} {cpus:.2f}" for name, cpus in meta["other_cpus"].items())
        lines += [f"CPUs used by other processes on the machine during each group (of {meta['cpus']}): {load}. "
                  "Above ~0.3 the timings of that group are pessimistic.", ""]
    if results["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    lines += ["## Targets", ""]
    lines += _table(["target", "measured", "goal", "status"], [
        [t["target"], t["measured"], t["goal"], {True: "met", False: "**missed**", None: "n/a"}[t["met"]]]
        for t in results["targets"]])
    g = results["groups"]
    for name, render in (("transfer", _transfer_md), ("latency", _latency_md), ("memory", _memory_md),
                         ("peers", _peers_md), ("history", _history_md), ("get_over_old", _get_over_old_md),
                         ("startup", _startup_md), ("check", _check_md), ("sync", _sync_md)):
        if name in g and "error" not in g[name]:
            lines += render(g[name])
        elif name in g:
            lines += [f"## {name}", "", f"failed: {g[name]['error']}", ""]
    lines += ["Charts: " + ", ".join(f"`{c}`" for c in results.get("charts", [])), ""]
    return "\n".join(lines)


def write(results: dict, out: Path) -> None:
    """Evaluate targets, draw charts, write latest.json and latest.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = evaluate(results)
    try:
        results["charts"] = draw_all(results, out)
    except Exception as exc:  # noqa: BLE001 - a chart failure must not lose the figures
        results["notes"].append(f"charts failed: {exc}")
        results["charts"] = []
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(markdown(results))
