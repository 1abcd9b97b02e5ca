"""Making a cluster's TLS material: a CA and a node certificate it signed.

``create_cluster_certs(directory)`` writes, in a directory it makes owner-only (0700)::

    ca.pem     the cluster CA's certificate: the trust root every member loads
    ca.key     the CA's private key (0600): only needed to sign more certificates;
               keep it off the other machines
    node.pem   a certificate the CA signed, for nodes and drivers (client and server use)
    node.key   its private key (0600)

and returns the `TlsConfig` of ``node.pem``/``node.key``/``ca.pem``. Copy those three
files to every machine of the cluster. Keys are ECDSA P-256 (fast handshakes);
the node certificate names this host, ``localhost`` and 127.0.0.1 (host names are
not checked by the transport: trust comes from the cluster CA alone).

Needs the ``cryptography`` package (``pip install 'actorcore[tls]'``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from ._tls import TlsConfig

__all__ = ["create_cluster_certs"]

_FILES = ("ca.pem", "ca.key", "node.pem", "node.key")


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ImportError(
            "making TLS certificates needs the 'cryptography' package: "
            "pip install 'actorcore[tls]' (or pip install cryptography)"
        ) from None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def create_cluster_certs(
    directory: str | os.PathLike[str],
    *,
    days: int = 825,
    hosts: list[str] | None = None,
    common_name: str = "actorcore cluster",
) -> TlsConfig:
    """Create a cluster CA and a node certificate in ``directory`` (see the module
    docstring); return the node's `TlsConfig`.

    ``days``: validity of the node certificate (the CA gets ten years). ``hosts``:
    extra DNS names or IP addresses to name in it. Refuses (`FileExistsError`) to
    overwrite any of the four files.
    """
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be an int >= 1, got {days!r}")
    x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID = _crypto()
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    existing = [name for name in _FILES if (out / name).exists()]
    if existing:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}: refusing to overwrite TLS "
            f"material (a new CA would lock out every member using the old one)"
        )
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # tolerate small clock differences

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    node_key = ec.generate_private_key(ec.SECP256R1())
    names: list[Any] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in [socket.gethostname(), *(hosts or [])]:
        try:
            entry: Any = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    node_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} node")]))
        .issuer_name(ca_name)
        .public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(node_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    pem = serialization.Encoding.PEM
    _write(out / "ca.key", key_pem(ca_key), 0o600)
    _write(out / "ca.pem", ca_cert.public_bytes(pem), 0o644)
    _write(out / "node.key", key_pem(node_key), 0o600)
    _write(out / "node.pem", node_cert.public_bytes(pem), 0o644)
    return TlsConfig(cert=out / "node.pem", key=out / "node.key", ca=out / "ca.pem")
