"""The relay's rules for asyncssh's packets, without a server: write coalescing, stepped
receive that stops at a close, and when the CBC countermeasure packet is kept."""

from __future__ import annotations

import pytest

from gateway.ssh.relay import RECEIVE_STEP, Coalescer, feed_in_steps, ignore_needed

pytestmark = pytest.mark.unit


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class Soon:
    """call_soon for one turn of a loop: what was scheduled runs when ``turn()`` is called."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def __call__(self, callback, *args) -> None:
        self.callbacks.append((callback, args))

    def turn(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback, args in callbacks:
            callback(*args)


def test_the_packets_of_one_turn_leave_in_one_write_in_their_order():
    transport, soon = FakeTransport(), Soon()
    out = Coalescer(lambda: transport, soon)
    for packet in (b"one", b"two", b"three"):
        out.send(packet)
    assert transport.writes == []  # nothing written while the read is handled
    assert len(soon.callbacks) == 1  # one flush scheduled, not one per packet
    soon.turn()
    assert transport.writes == [b"onetwothree"]
    out.send(b"four")
    soon.turn()
    assert transport.writes == [b"onetwothree", b"four"]


def test_what_is_pending_is_written_before_a_close_and_nothing_is_queued_after_it():
    transport, soon = FakeTransport(), Soon()
    current = {"transport": transport}
    out = Coalescer(lambda: current["transport"], soon)
    out.send(b"data")
    out.send(b"disconnect")
    out.flush()  # asyncssh_compat.route_output calls this just before asyncssh drops the transport
    assert transport.writes == [b"datadisconnect"]
    current["transport"] = None
    out.send(b"late")
    soon.turn()
    assert transport.writes == [b"datadisconnect"]
    assert out.pending == []


def test_a_transport_gone_before_the_flush_gets_nothing():
    soon = Soon()
    current = {"transport": FakeTransport()}
    written = current["transport"]
    out = Coalescer(lambda: current["transport"], soon)
    out.send(b"data")
    current["transport"] = None
    soon.turn()
    assert written.writes == []
    assert out.pending == []


def test_a_small_read_is_handed_over_whole():
    fed: list[bytes] = []
    feed_in_steps(fed.append, b"x" * RECEIVE_STEP, lambda: True)
    assert fed == [b"x" * RECEIVE_STEP]


def test_a_large_read_is_handed_over_in_steps_that_join_to_it():
    data = bytes(range(256)) * (RECEIVE_STEP // 64)  # four steps' worth and a bit
    data += b"tail"
    fed: list[bytes] = []
    feed_in_steps(fed.append, data, lambda: True)
    assert [len(piece) for piece in fed] == [RECEIVE_STEP] * 4 + [4]
    assert b"".join(fed) == data
    assert all(type(piece) is bytes for piece in fed)  # asyncssh keeps them: no views of the read


def test_the_steps_stop_at_the_one_that_closed_the_connection():
    data = b"".join(bytes([n]) * RECEIVE_STEP for n in range(5))
    fed: list[bytes] = []
    state = {"open": True}

    def receive(piece: bytes) -> None:
        fed.append(piece)
        if piece[0] == 1:  # a protocol error in the second step: asyncssh closes
            state["open"] = False

    feed_in_steps(receive, data, lambda: state["open"])
    assert [piece[0] for piece in fed] == [0, 1]


@pytest.mark.parametrize("size", [10, 5 * RECEIVE_STEP])
def test_a_read_that_arrives_after_the_close_is_not_handed_over(size):
    fed: list[bytes] = []
    feed_in_steps(fed.append, b"x" * size, lambda: False)
    assert fed == []


@pytest.mark.parametrize(
    "cipher, needed",
    [
        ("aes128-cbc", True),
        ("aes256-cbc", True),
        ("3des-cbc", True),
        ("aes128-gcm@openssh.com", False),
        ("aes256-gcm@openssh.com", False),
        ("aes128-ctr", False),
        ("chacha20-poly1305@openssh.com", False),
        ("", False),  # before the first key exchange: nothing is encrypted
        (None, False),
    ],
)
def test_the_empty_ignore_packet_is_kept_only_for_cbc_ciphers(cipher, needed):
    assert ignore_needed(cipher) is needed
