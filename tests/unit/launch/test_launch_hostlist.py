import pytest

from nemo_prorl.launch import HostlistError, parse_hostlist, parse_tasks_per_node


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node001", ["node001"]),
        ("gpu-a1", ["gpu-a1"]),
        ("node[001-004,007],gpu-a1", ["node001", "node002", "node003", "node004", "node007", "gpu-a1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[08-11]", ["node08", "node09", "node10", "node11"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("a[1,3],b[2-3]", ["a1", "a3", "b2", "b3"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("[1-2]x", ["1x", "2x"]),
        ("pre[5]post", ["pre5post"]),
        ("dgx-[0001-0002].cluster.local", ["dgx-0001.cluster.local", "dgx-0002.cluster.local"]),
        ("localhost,127.0.0.1", ["localhost", "127.0.0.1"]),
        (" node[1-2] ", ["node1", "node2"]),
        ("n[0-0]", ["n0"]),
    ],
)
def test_parse_hostlist(text, expected):
    assert parse_hostlist(text) == expected


def test_parse_hostlist_large_range_count():
    hosts = parse_hostlist("n[0001-1024]")
    assert len(hosts) == 1024
    assert hosts[0] == "n0001" and hosts[-1] == "n1024"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty host list"),
        ("node[1-2", "unclosed"),
        ("node1-2]", "unmatched"),
        ("node[[1]]", "nested"),
        ("node[]", "empty brackets"),
        ("node[3-1]", "descending"),
        ("node[a-b]", "bad range"),
        ("node[1-]", "bad range"),
        ("a,,b", "empty host name"),
        ("a,", "empty host name"),
        ("no de", "whitespace"),
        ("n[0-99999999]", "more than"),
    ],
)
def test_parse_hostlist_errors(text, fragment):
    with pytest.raises(HostlistError, match=fragment) as info:
        parse_hostlist(text, "SLURM_JOB_NODELIST")
    assert "SLURM_JOB_NODELIST" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8", [8]),
        ("2(x3),1", [2, 2, 2, 1]),
        ("8(x4)", [8, 8, 8, 8]),
        ("4,8(x2),1(x1)", [4, 8, 8, 1]),
        (" 1 , 2 ", [1, 2]),
    ],
)
def test_parse_tasks_per_node(text, expected):
    assert parse_tasks_per_node(text) == expected


@pytest.mark.parametrize("text", ["", "x", "2(x)", "2x3", "0", "2(x0)", "-1", "2(x3", "8,,8"])
def test_parse_tasks_per_node_errors(text):
    with pytest.raises(HostlistError, match="SLURM_TASKS_PER_NODE"):
        parse_tasks_per_node(text)
