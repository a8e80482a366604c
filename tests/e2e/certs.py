"""Test certificates made with `cryptography`: a CA, server and client certificates it signs,
and the broken ones (expired, for another name, from another CA) the TLS tests need."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Pair:
    cert: Path
    key: Path


@dataclass
class CA:
    name: str
    cert: Path
    key_obj: ec.EllipticCurvePrivateKey
    cert_obj: x509.Certificate


def _write(dir: Path, stem: str, cert: x509.Certificate, key) -> Pair:
    c, k = dir / f"{stem}.pem", dir / f"{stem}-key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    k.chmod(0o600)
    return Pair(c, k)


def make_ca(dir: Path, name: str = "tollgate-test-ca") -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    pair = _write(dir, name, cert, key)
    return CA(name, pair.cert, key, cert)


def issue(
    ca: CA,
    dir: Path,
    stem: str,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = (),
    client: bool = False,
    expired: bool = False,
) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        before, after = NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=3)
    else:
        before, after = NOW - datetime.timedelta(hours=1), NOW + datetime.timedelta(days=7)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
        .issuer_name(ca.cert_obj.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(ca.key_obj, hashes.SHA256())
    )
    return _write(dir, stem, cert, key)
