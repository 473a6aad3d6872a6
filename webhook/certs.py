"""The webhook's own CA and serving certificate: made, checked and renewed. Pure (time is an argument).

The API server trusts the webhook through the MutatingWebhookConfiguration's ``caBundle``. Renewing
only the serving certificate keeps the CA, so the bundle does not change and nothing is refused
while replicas pick up the new certificate. When the CA itself nears its end, a new CA signs the new
serving certificate and the bundle holds the new and the old CA until the old one expires, so a
replica still serving the previous certificate stays trusted.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_KEY, CA_CERT, TLS_KEY, TLS_CERT, BUNDLE = "ca.key", "ca.crt", "tls.key", "tls.crt", "ca-bundle.crt"
RENEW_FRACTION = 3
"""Renew a certificate once less than 1/RENEW_FRACTION of its validity is left."""
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks of the API server a little behind ours


@dataclass(frozen=True)
class TlsMaterial:
    """PEM texts as stored in the Secret."""

    ca_key: str
    ca_cert: str
    tls_key: str
    tls_cert: str
    bundle: str

    def as_data(self) -> dict[str, str]:
        """The Secret's `stringData`-shaped map."""
        return {CA_KEY: self.ca_key, CA_CERT: self.ca_cert, TLS_KEY: self.tls_key, TLS_CERT: self.tls_cert,
                BUNDLE: self.bundle}

    @classmethod
    def from_data(cls, data: dict[str, str]) -> TlsMaterial | None:
        """From a Secret's decoded data; None when a key is missing."""
        try:
            return cls(data[CA_KEY], data[CA_CERT], data[TLS_KEY], data[TLS_CERT], data[BUNDLE])
        except KeyError:
            return None


@dataclass(frozen=True)
class Validity:
    """How long new certificates last."""

    ca: dt.timedelta = dt.timedelta(days=3650)
    serving: dt.timedelta = dt.timedelta(days=365)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_ca(now: dt.datetime, lifetime: dt.timedelta, common_name: str) -> tuple[str, str]:
    """(key PEM, certificate PEM) of a fresh self-signed CA."""
    key = _key()
    # Each CA gets its own name (and key identifier): while the bundle holds the old and the new
    # CA, a verifier picks the issuer by name and must find the one that signed.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {now:%Y-%m-%dT%H:%M:%SZ}"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{x509.random_serial_number():x}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + lifetime)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _pem_key(key), _pem(cert)


def new_serving(ca_key_pem: str, ca_cert_pem: str, now: dt.datetime, lifetime: dt.timedelta,
                dns_names: Sequence[str], ip_addresses: Sequence[str]) -> tuple[str, str]:
    """(key PEM, certificate PEM) of a serving certificate for the names, signed by the CA."""
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    key = _key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(dns_names) or list(ip_addresses))[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return _pem_key(key), _pem(cert)


def _certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode()) if pem.strip() else []


def _due(cert: x509.Certificate, now: dt.datetime) -> bool:
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime / RENEW_FRACTION


def _covers(cert: x509.Certificate, dns_names: Sequence[str], ip_addresses: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ip = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(dns_names) <= have_dns and {str(ipaddress.ip_address(ip)) for ip in ip_addresses} <= have_ip


def renewed(current: TlsMaterial | None, now: dt.datetime, dns_names: Sequence[str], ip_addresses: Sequence[str],
            validity: Validity = Validity(), common_name: str = "vgpu-dra webhook CA") -> TlsMaterial | None:
    """What the Secret should hold now, or None when `current` is still good.

    Renews the serving certificate when it is missing, unreadable, not from the current CA, not for
    all the names, or in its last third; the CA (and so the serving certificate) when the CA is in
    its last third. The bundle is the current CA plus any earlier CA not yet expired."""
    try:
        ca = _certs(current.ca_cert) if current else []
        serving = _certs(current.tls_cert) if current else []
        bundle = _certs(current.bundle) if current else []
        if current:
            serialization.load_pem_private_key(current.ca_key.encode(), None)
            serialization.load_pem_private_key(current.tls_key.encode(), None)
    except ValueError:
        ca, serving, bundle = [], [], []
    if current is None or len(ca) != 1 or not serving:
        ca_key, ca_cert = new_ca(now, validity.ca, common_name)
        key, cert = new_serving(ca_key, ca_cert, now, validity.serving, dns_names, ip_addresses)
        return TlsMaterial(ca_key, ca_cert, key, cert, ca_cert)
    ca_key, ca_cert = current.ca_key, current.ca_cert
    earlier = [c for c in bundle if c != ca[0] and c.not_valid_after_utc > now]
    if _due(ca[0], now):
        earlier = [ca[0], *earlier]
        ca_key, ca_cert = new_ca(now, validity.ca, common_name)
    elif (not _due(serving[0], now) and serving[0].issuer == ca[0].subject
          and _verifies(serving[0], ca[0]) and _covers(serving[0], dns_names, ip_addresses)
          and _certs(current.bundle)[:1] == ca):
        return None
    key, cert = new_serving(ca_key, ca_cert, now, validity.serving, dns_names, ip_addresses)
    bundle_pem = ca_cert + "".join(_pem(c) for c in earlier)
    return TlsMaterial(ca_key, ca_cert, key, cert, bundle_pem)


def _verifies(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure means "not from this CA"
        return False
    return True


def not_after(pem: str) -> dt.datetime:
    """Expiry of the first certificate in `pem`."""
    return _certs(pem)[0].not_valid_after_utc
