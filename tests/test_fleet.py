"""The fleet's pure cores: leases with epochs (registry.Leases), spreading cameras over cells
(cells.assign), the fleet file (cells.load) and the cell's command line. No Ray needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamseg.fleet import cells
from streamseg.fleet.cells import Camera, FleetError
from streamseg.fleet.registry import Leases, fence_s

# -- leases ------------------------------------------------------------------------------------


def claim(leases: Leases, now: float, cell: str = "c0", node: str = "n1") -> int | None:
    return leases.claim(cell, ("cam1", "cam2"), "10.0.0.1", node, f"tcp://h:{int(now)}", now)


def test_a_cell_is_granted_again_only_after_its_holder_lease_ran_out():
    leases = Leases(lease_s=4.0)
    assert claim(leases, 0.0) == 1
    assert leases.renew("c0", 1, "running", 3.0)
    assert claim(leases, 6.9, node="n2") is None  # the holder renewed at 3.0: live until 7.0
    assert claim(leases, 7.0, node="n2") == 2
    assert not leases.renew("c0", 1, "running", 7.1)  # stale epoch: that holder must stop
    assert leases.renew("c0", 2, "running", 8.0)
    (move,) = leases.moves
    assert (move.from_node, move.to_node, move.from_epoch, move.to_epoch) == ("n1", "n2", 1, 2)
    assert move.gap_s == pytest.approx(4.0) and move.cameras == ("cam1", "cam2")


def test_a_late_renewal_is_refused_even_with_the_current_epoch():
    leases = Leases(lease_s=4.0)
    assert claim(leases, 0.0) == 1
    assert not leases.renew("c0", 1, "running", 4.0)
    assert not leases.renew("c1", 1, "running", 1.0)  # never granted


def test_a_holder_fences_itself_before_the_registry_grants_again():
    # the holder counts from when it sent its last good renewal (earlier than its arrival)
    assert 0 < fence_s(4.0) < 4.0


def test_release_lets_the_cell_be_granted_at_once_and_never_two_holders():
    leases = Leases(lease_s=4.0)
    assert claim(leases, 0.0) == 1
    leases.release("c0", 99, 1.0)  # another epoch's release changes nothing
    assert claim(leases, 1.0) is None
    leases.release("c0", 1, 1.0)
    assert claim(leases, 1.5) == 2
    assert leases.moves[-1].gap_s == pytest.approx(0.5)  # from the release, not a lease
    holders = [t for t in (1.5, 2.0, 3.0) if claim(leases, t) is not None]
    assert holders == []


def test_status_and_endpoints_say_lost_for_a_cell_without_a_live_holder():
    leases = Leases(lease_s=4.0)
    assert leases.status(0.0) == [] and leases.endpoints(0.0) == []
    claim(leases, 0.0)
    rows = leases.status(1.0)
    assert [(r["camera"], r["cell"], r["state"]) for r in rows] == [
        ("cam1", "c0", "starting"),
        ("cam2", "c0", "starting"),
    ]
    assert [e["endpoint"] for e in leases.endpoints(1.0)] == ["tcp://h:0"]
    assert {r["state"] for r in leases.status(5.0)} == {"lost"}
    assert leases.endpoints(5.0) == []


def test_file_sd_lists_each_live_cells_metrics_with_its_cell_host_and_cameras(tmp_path):
    import json

    from streamseg.fleet.cli import write_sd
    from streamseg.fleet.registry import file_sd

    leases = Leases(lease_s=4.0)
    leases.claim("c0", ("a", "b"), "10.0.0.1", "n1", "tcp://10.0.0.1:5000", 0.0,
                 metrics="http://10.0.0.1:8001/metrics")  # fmt: skip
    leases.claim("c1", ("c",), "10.0.0.2", "n2", "tcp://10.0.0.2:5000", 0.0)  # serves no page
    leases.claim("c2", ("d",), "10.0.0.3", "n3", "tcp://10.0.0.3:5000", 3.0,
                 metrics="http://[::1]:8003/metrics")  # fmt: skip
    want = [
        {"targets": ["10.0.0.1:8001"], "labels": {"cell": "c0", "host": "10.0.0.1",
                                                  "cameras": "a,b"}},
        {"targets": ["[::1]:8003"], "labels": {"cell": "c2", "host": "10.0.0.3", "cameras": "d"}},
    ]  # fmt: skip
    assert file_sd(leases.endpoints(3.5)) == want
    assert file_sd(leases.endpoints(5.0)) == want[1:]  # c0's lease ran out: not scraped
    assert {r["camera"]: r["metrics"] for r in leases.status(3.5)} == {
        "a": "http://10.0.0.1:8001/metrics", "b": "http://10.0.0.1:8001/metrics", "c": "",
        "d": "http://[::1]:8003/metrics",
    }  # fmt: skip
    sd = tmp_path / "streamseg.json"
    sd.write_text("stale")
    write_sd(str(sd), file_sd(leases.endpoints(3.5)))
    assert json.loads(sd.read_text()) == want and [p.name for p in tmp_path.iterdir()] == [sd.name]
    with pytest.raises(OSError):
        write_sd(str(tmp_path / "missing" / "sd.json"), want)


def test_a_cell_serves_its_page_on_its_publishers_host_unless_told_not_to():
    fleet = cells.load(GOOD, path="f.toml")
    serve, metrics = cells.serve_address(fleet, "127.0.0.1")
    host, port = serve.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0 and metrics == f"http://{serve}/metrics"
    cmd = cells.watch_command(fleet, fleet.cameras, "tcp://127.0.0.1:5000", serve=serve)
    assert cmd[cmd.index("--serve") + 1] == serve
    assert "--serve" not in cells.watch_command(fleet, fleet.cameras, "tcp://127.0.0.1:5000")
    off = cells.load("serve = false\n" + GOOD, path="f.toml")
    assert not off.serve and cells.serve_address(off, "127.0.0.1") == ("", "")
    own = cells.load('options = ["--serve", "9000"]\n' + GOOD.replace("options", "#"), path="f")
    assert cells.serve_address(own, "127.0.0.1") == ("", "")
    with pytest.raises(FleetError, match="serve = 1 has the wrong type"):
        cells.load("serve = 1\n" + GOOD, path="f.toml")


# -- spreading cameras --------------------------------------------------------------------------


def cams(*weights: float) -> list[Camera]:
    return [Camera(f"cam{i}", f"rtsp://h/{i}", w) for i, w in enumerate(weights)]


def test_assign_spreads_evenly_and_keeps_the_file_order():
    shards = cells.assign(cams(1, 1, 1, 1), cells=2, max_per_cell=2)
    assert [[c.name for c in s] for s in shards] == [["cam0", "cam2"], ["cam1", "cam3"]]
    assert [len(s) for s in cells.assign(cams(*[1] * 7), 0, 3)] == [3, 2, 2]


def test_assign_by_weight_and_room():
    shards = cells.assign(cams(4, 1, 1, 1, 1), cells=2, max_per_cell=4)
    assert [[c.name for c in s] for s in shards] == [["cam0"], ["cam1", "cam2", "cam3", "cam4"]]
    shards = cells.assign(cams(4, 1, 1, 1, 1), cells=2, max_per_cell=3)
    assert sorted(len(s) for s in shards) == [2, 3]  # room beats weight


def test_assign_empty_and_fewer_cameras_than_cells():
    assert cells.assign([], 0, 4) == []
    assert [len(s) for s in cells.assign(cams(1), cells=3, max_per_cell=2)] == [1]


# -- the fleet file -----------------------------------------------------------------------------

GOOD = """
config = "my.toml"
max_cameras_per_cell = 2
lease_s = 3
options = ["--device", "cpu"]
[[cameras]]
name = "gate"
url = "rtsp://10.0.0.5/gate"
[[cameras]]
url = "clips/door.mp4"
weight = 2
"""


def test_load_a_fleet_file():
    fleet = cells.load(GOOD, path="f.toml", base=Path("/srv/fleet"))
    assert fleet.config == "/srv/fleet/my.toml" and fleet.pipeline == "watch"
    assert fleet.cameras == (
        Camera("gate", "rtsp://10.0.0.5/gate", 1.0),
        Camera("cam2", "/srv/fleet/clips/door.mp4", 2.0),
    )
    assert fleet.lease_s == 3 and fleet.options == ("--device", "cpu")
    cmd = cells.watch_command(fleet, fleet.cameras, "tcp://10.0.0.9:5000", python="py")
    assert cmd[:5] == ["py", "-m", "streamseg.cli", "watch", "-q"]
    assert "gate=rtsp://10.0.0.5/gate" in cmd and cmd[-2:] == ["--device", "cpu"]
    assert cmd[cmd.index("--publish") + 1] == "tcp://10.0.0.9:5000"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("x = [", "not TOML"),
        ('colour = "red"\n[[cameras]]\nurl = "a"', "unknown field 'colour'"),
        ("max_cameras_per_cell = 2", "no cameras"),
        ("[[cameras]]\nname = 'a'", "needs url"),
        ('[[cameras]]\nurl = "a"\nname = "x"\n[[cameras]]\nurl = "b"\nname = "x"', "twice"),
        ('[[cameras]]\nurl = "a"\nweight = 0', "weight must be"),
        ('lease_s = "3"\n[[cameras]]\nurl = "a"', "wrong type"),
        ('keys = "k/a"\n[[cameras]]\nurl = "a"', "both keys and allow_keys"),
        ('cells = 1\nmax_cameras_per_cell = 1\n[[cameras]]\nurl = "a"\n[[cameras]]\nurl = "b"',
         "do not fit"),
    ],
)  # fmt: skip
def test_a_bad_fleet_file_is_one_line_naming_it(text, says):
    with pytest.raises(FleetError, match=says) as e:
        cells.load(text, path="f.toml")
    assert str(e.value).startswith("f.toml: ") and "\n" not in str(e.value)


# -- without Ray ---------------------------------------------------------------------------------

WITHOUT_RAY = "import sys; sys.modules['ray'] = None  # import ray: ImportError\n"


def test_everything_imports_without_ray_and_ray_commands_name_the_extra(tmp_path):
    import subprocess
    import sys

    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[cameras]]\nurl = "rtsp://h/a"\n')
    code = WITHOUT_RAY + (
        "import streamseg.cli, streamseg.fleet.cli, streamseg.fleet.ray_backend\n"
        "import streamseg.fleet.cells, streamseg.fleet.subscriber, streamseg.fleet.runner\n"
        "from streamseg.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    (tmp_path / "a.mp4").write_bytes(b"x")
    corpus = ["annotate", str(tmp_path), "-o", str(tmp_path / "o"), "--ray", "auto"]
    for args in (["fleet", "status"], ["fleet", str(fleet)], ["subscribe", "--fleet", "a"], corpus):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "pip install 'streamseg[ray]'" in proc.stderr and "Traceback" not in proc.stderr


# -- a cell's figures ----------------------------------------------------------------------------


def test_figures_rate_latency_and_drops_per_camera():
    from streamseg.fleet.figures import Figures

    f = Figures(window_s=10.0)
    assert f.figures(0.0) == {}
    for i, frame in enumerate([0, 1, 2, 5, 6]):  # frames 3 and 4 dropped
        f.add("gate", frame, 0.1 * (i + 1), now=100.0 + 0.5 * i)
    got = f.figures(102.0)["gate"]
    assert got["fps"] == pytest.approx(5 / 2.0) and got["latency_ms"] == pytest.approx(300.0)
    assert (got["dropped"], got["results"], got["age_s"]) == (2, 5, 0.0)
    f.add("door", 0, 0.2, now=102.5)
    assert f.figures(102.5)["door"]["fps"] is None  # younger than a second: no rate yet
    later = f.figures(120.0)["gate"]  # nothing for longer than the window
    assert later["fps"] == 0.0 and later["latency_ms"] is None and later["age_s"] == 18.0


def test_status_carries_each_camera_figures_until_the_next_grant():
    leases = Leases(lease_s=4.0)
    claim(leases, 0.0)
    assert leases.renew("c0", 1, "running", 1.0, {"cam1": {"fps": 5.0}})
    rows = {r["camera"]: r for r in leases.status(1.0)}
    assert rows["cam1"]["fps"] == 5.0 and "fps" not in rows["cam2"]
    claim(leases, 6.0)
    assert all("fps" not in r for r in leases.status(6.0))  # a new holder starts without


def test_rebalance_moves_cells_from_crowded_nodes_onto_nodes_with_room():
    from streamseg.fleet.registry import rebalance_plan

    assert rebalance_plan({"c0": "A", "c1": "A"}, {"A": 0, "B": 2}) == [("c1", "A", "B")]
    assert rebalance_plan({"c0": "A", "c1": "B"}, {"A": 0, "B": 0, "C": 2}) == []  # off by 1
    crowded = {f"c{i}": "A" for i in range(4)}
    assert rebalance_plan(crowded, {"A": 0, "B": 1, "C": 4}) == [
        ("c3", "A", "B"),
        ("c2", "A", "C"),
    ]
    assert rebalance_plan(crowded, {"A": 0}) == []  # nowhere to go
    assert rebalance_plan({}, {"A": 3}) == []
