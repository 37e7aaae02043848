"""Published vectors driving tunneld.proto.wg: KDF, IKpsk2, AEADs, replay window.

The data files in tests/vectors cite their sources; this module only loads them.
"""

from __future__ import annotations

import ast
import json
import operator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunneld.proto.wg import noise
from tunneld.proto.wg.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from tunneld.proto.wg.cookie import xaead, xaead_open
from tunneld.proto.wg.replay import ReplayWindow

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def h(s: str) -> bytes:
    return bytes.fromhex(s)


@pytest.mark.parametrize("case", load("wg_kdf_test_vectors.json")["vectors"])
def test_kdf_wireguard_go(case: dict) -> None:
    key, data = h(case["key"]), h(case["input"])
    assert noise.KDF1(key, data).hex() == case["t0"]
    assert [t.hex() for t in noise.KDF2(key, data)] == [case["t0"], case["t1"]]
    assert [t.hex() for t in noise.KDF3(key, data)] == [case["t0"], case["t1"], case["t2"]]


def test_cacophony_ikpsk2() -> None:
    v = load("cacophony_ikpsk2_25519_chachapoly_blake2s.json")
    name = v["protocol_name"].encode()
    init = noise.ik_psk2_initiator(
        name,
        h(v["init_prologue"]),
        h(v["init_static"]),
        h(v["init_ephemeral"]),
        h(v["init_remote_static"]),
        h(v["init_psks"][0]),
    )
    resp = noise.ik_psk2_responder(
        name,
        h(v["resp_prologue"]),
        h(v["resp_static"]),
        h(v["resp_ephemeral"]),
        h(v["resp_psks"][0]),
    )
    m = v["messages"]
    msg1 = noise.ik_psk2_write_message_1(init, h(m[0]["payload"]))
    assert msg1.hex() == m[0]["ciphertext"]
    assert noise.ik_psk2_read_message_1(resp, msg1) == h(m[0]["payload"])
    assert resp.rs == h(v["init_remote_static"]) or resp.rs == noise.DH_PUBLIC(h(v["init_static"]))
    msg2 = noise.ik_psk2_write_message_2(resp, h(m[1]["payload"]))
    assert msg2.hex() == m[1]["ciphertext"]
    assert noise.ik_psk2_read_message_2(init, msg2) == h(m[1]["payload"])
    assert init.sym.h.hex() == resp.sym.h.hex() == v["handshake_hash"]
    i_send, i_recv = init.sym.split()
    r_recv, r_send = resp.sym.split()
    assert (i_send, i_recv) == (r_recv, r_send)
    nonces = {True: 0, False: 0}
    for k, msg in enumerate(m[2:]):
        from_initiator = k % 2 == 0
        key = i_send if from_initiator else r_send
        sealed = noise.AEAD(key, nonces[from_initiator], h(msg["payload"]), b"")
        nonces[from_initiator] += 1
        assert sealed.hex() == msg["ciphertext"]


def test_rfc8439_aead() -> None:
    v = load("rfc8439_aead_2_8_2.json")
    aead = ChaCha20Poly1305(h(v["key"]))
    sealed = aead.encrypt(h(v["nonce"]), h(v["plaintext"]), h(v["aad"]))
    assert sealed.hex() == v["ciphertext"] + v["tag"]
    # and through encrypt_into / decrypt_into, in place, as the data path does
    buf = bytearray(len(sealed))
    n = len(v["plaintext"]) // 2
    buf[:n] = h(v["plaintext"])
    view = memoryview(buf)
    aead.encrypt_into(h(v["nonce"]), view[:n], h(v["aad"]), view)
    assert bytes(buf) == sealed
    aead.decrypt_into(h(v["nonce"]), view, h(v["aad"]), view[:n])
    assert bytes(buf[:n]) == h(v["plaintext"])


def test_xchacha20poly1305_draft() -> None:
    v = load("xchacha20poly1305_draft03_a3_1.json")
    sealed = xaead(h(v["key"]), h(v["nonce"]), h(v["plaintext"]), h(v["aad"]))
    assert sealed.hex() == v["ciphertext"] + v["tag"]
    assert xaead_open(h(v["key"]), h(v["nonce"]), sealed, h(v["aad"])) == h(v["plaintext"])
    assert xaead_open(h(v["key"]), h(v["nonce"]), sealed, b"other") is None


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _value(expr: str, names: dict[str, int]) -> int:
    """Evaluate the kernel's T(n, v) argument: integers, names, + - * and parentheses."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(expr)

    return walk(ast.parse(expr, mode="eval"))


def _kernel_steps() -> list[list[tuple[int, bool]]]:
    names = {
        "W": REPLAY_WINDOW_SIZE,
        "T_LIM": REPLAY_WINDOW_SIZE + 1,
        "REJECT_AFTER_MESSAGES": REJECT_AFTER_MESSAGES,
    }
    blocks = []
    for block in load("replay_kernel_counter_selftest.json")["blocks"]:
        steps: list[tuple[int, bool]] = []
        for step in block["steps"]:
            if isinstance(step, dict):
                start, stop, stride = step["range"]
                rng = range(_value(start, names), _value(stop, names), stride)
                steps.extend((i, step["expect"]) for i in rng)
            else:
                steps.append((_value(step[0], names), step[1]))
        blocks.append(steps)
    return blocks


def test_replay_window_matches_kernel_selftest() -> None:
    assert REPLAY_WINDOW_SIZE == 8128  # the kernel's COUNTER_WINDOW_SIZE on 64-bit
    test_num = 0
    for steps in _kernel_steps():
        window = ReplayWindow()  # T_INIT
        for counter, expected in steps:
            test_num += 1
            assert window.check_and_commit(counter) is expected, (test_num, counter)
    assert test_num > 5 * REPLAY_WINDOW_SIZE
