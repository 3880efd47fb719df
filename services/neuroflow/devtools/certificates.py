"""A certificate authority and certificates made for one local stack (or one test), with ``cryptography``.

A site's own servers get their certificates from the site's PKI; the local stack has none, so it makes a
CA of its own at start and signs what its servers and clients present. Keys are written readable by
their owner only. Nothing here is meant for production: the CA key stays next to what it signed."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = datetime.timedelta(days=30)  # a development stack is restarted long before


@dataclass(frozen=True)
class CertificateFiles:
    """PEM files of one certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's certificate (what clients and servers trust) and key (what signs), as PEM files."""

    cert: Path
    key: Path

    def issue(self, folder: Path, name: str, *, hosts: tuple[str, ...] = (), client: bool = False) -> CertificateFiles:
        """A certificate for ``name`` signed by this CA, in ``folder/<name>.crt`` and ``.key``: a server
        certificate valid for ``hosts`` (DNS names or IP addresses), or a client certificate (``client``)
        whose common name is ``name`` (the principal a server sees)."""
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key} is not the EC key this module writes")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALID_FOR)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False))
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
                                            critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return _write(folder, name, cert, key)


def make_ca(folder: Path, name: str = "neuroflow-local-ca") -> CertificateAuthority:
    """A new self-signed CA in ``folder/<name>.crt`` and ``.key`` (replacing any there)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    files = _write(folder, name, cert, key)
    return CertificateAuthority(files.cert, files.key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertificateFiles:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.unlink(missing_ok=True)
    # Created 0600: the key is never readable by another user, not even for a moment.
    with os.fdopen(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return CertificateFiles(cert_path, key_path)


def stack_ca(folder: Path) -> CertificateAuthority:
    """The CA of the stack kept in ``folder`` (made on first use, reused afterwards: a server restarted
    in a running stack must present a certificate its clients still trust)."""
    ca = CertificateAuthority(folder / "neuroflow-local-ca.crt", folder / "neuroflow-local-ca.key")
    return ca if ca.cert.is_file() and ca.key.is_file() else make_ca(folder)
