"""A throw-away certificate authority and one server certificate for loopback federation.

Every lab homeserver is named ``localhost:<port>``, so one certificate with the SANs
``DNS:localhost`` and ``IP:127.0.0.1`` serves them all. No wildcard SANs: Synapse rejects the
whole certificate on ``*.localhost`` ("too few host components for wildcard").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    ca_cert: Path  # goes into every server's federation_custom_ca_list
    cert: Path  # server certificate (leaf followed by the CA, a complete chain)
    key: Path  # server private key


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity() -> tuple[dt.datetime, dt.datetime]:
    # Backdate a day so small clock differences never make the cert "not yet valid"; ten
    # years so a persisted demo directory keeps working.
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(days=1), now + dt.timedelta(days=3650)


def make_ca(directory: Path, common_name: str = "Stranger Bridge lab CA") -> tuple[Path, Path]:
    """Create ``ca.crt`` and ``ca.key`` in *directory*; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    _write_key(key_path, key)
    cert_path.write_bytes(_pem(cert))
    return cert_path, key_path


def make_server_cert(
    directory: Path,
    ca_cert_path: Path,
    ca_key_path: Path,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
) -> tuple[Path, Path]:
    """Create ``server.crt`` (chain) and ``server.key`` signed by the CA; returns their paths."""
    if any("*" in name for name in dns_names):
        raise ValueError("wildcard SANs make Synapse reject the certificate; list names explicitly")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    _write_key(key_path, key)
    cert_path.write_bytes(_pem(cert) + _pem(ca_cert))
    return cert_path, key_path


def ensure_certs(directory: Path) -> Certs:
    """Reuse the CA and server certificate in *directory*, creating whatever is missing.

    Idempotent so that a persisted lab (the demo) keeps the same CA across runs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key = directory / "server.crt", directory / "server.key"
    if not (ca_cert.exists() and ca_key.exists()):
        make_ca(directory)
        cert.unlink(missing_ok=True)  # a new CA invalidates the old leaf
    if not (cert.exists() and key.exists()):
        make_server_cert(directory, ca_cert, ca_key)
    return Certs(ca_cert=ca_cert, cert=cert, key=key)
