"""Certificates for the servers neuroflow starts itself (the local stack, tests): a certificate authority made
for one stack, and server and client certificates it signs, written as PEM files. A hospital brings its own
(helm/README.md, "What a site provides"); these exist so that development runs the same TLS code paths.

Keys are ECDSA P-256: generated in milliseconds, and accepted by OpenSSL as Orthanc (CivetWeb, DCMTK),
PostgreSQL and Python's ssl module use it. Private keys are written readable by their owner only.
"""

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

_VALID_DAYS = 365


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate and its key, as PEM files; ``combined`` holds both (what CivetWeb's SslCertificate takes)."""

    certificate: Path
    private_key: Path
    combined: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA of one stack: ``certificate`` is the file clients verify servers against (the CA bundle)."""

    certificate: Path
    private_key: Path

    def issue(self, name: str, folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
              client: bool = False, also_client: bool = False) -> IssuedCertificate:
        """A certificate for ``name`` signed by this CA, in ``folder`` as <name>.crt, <name>.key and <name>.pem.
        A server certificate names ``hosts`` (IP addresses or DNS names: clients verify the host they dialled
        against them); ``client`` makes a client certificate (CN = ``name``, the identity a server sees);
        ``also_client``: a server certificate that is a client one too (a broker presenting it to its own
        controller listener)."""
        ca_key = serialization.load_pem_private_key(self.private_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.private_key} is not the EC key this module writes")
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else
                 [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if also_client else
                 [ExtendedKeyUsageOID.SERVER_AUTH])
        builder = (_builder(name, key, ca_cert.subject)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if not client:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
                                            critical=False)
        certificate = builder.sign(ca_key, hashes.SHA256())
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path, combined = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.pem"
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = _private_pem(key)
        cert_path.write_bytes(cert_pem)
        write_private(key_path, key_pem)
        write_private(combined, cert_pem + key_pem)
        return IssuedCertificate(cert_path, key_path, combined)


def make_authority(folder: Path, name: str = "neuroflow development CA") -> CertificateAuthority:
    """A new self-signed CA in ``folder`` (ca.crt, ca.key); an existing one there is reused, so a restarted
    stack keeps the certificates its clients already trust."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        return CertificateAuthority(cert_path, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (_builder(name, key, subject)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .sign(key, hashes.SHA256()))
    write_private(key_path, _private_pem(key))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(cert_path, key_path)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable and writable by its owner only (0600) from the first byte."""
    path.unlink(missing_ok=True)  # an existing file would keep its mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _builder(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS)))


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
