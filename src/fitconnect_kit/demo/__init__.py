"""Demo material for the local FIT-Connect: a demo Leistung with its Fachdaten schemas.

The schemas are our own (written for this project): a small "Antrag auf Testleistung" with
applicant, address and request text — once as JSON Schema (draft 2020-12) and once as XSD.
"""

from __future__ import annotations

from importlib import resources

DEMO_LEISTUNGSSCHLUESSEL = "99400048079000"
DEMO_SERVICE_IDENTIFIER = f"urn:de:fim:leika:leistung:{DEMO_LEISTUNGSSCHLUESSEL}"
DEMO_SERVICE_NAME = "Testantrag (fitconnect-kit Demo-Leistung)"
DEMO_JSON_SCHEMA_URI = "urn:fitconnect-kit:demo:antrag:1.0.0:json"
DEMO_XML_SCHEMA_URI = "urn:fitconnect-kit:demo:antrag:1.0.0:xsd"
DEMO_XML_NAMESPACE = "urn:fitconnect-kit:demo:antrag:1.0"


def demo_json_schema_bytes() -> bytes:
    """The demo Fachdaten JSON Schema."""
    return resources.files(__package__).joinpath("antrag.schema.json").read_bytes()


def demo_xsd_bytes() -> bytes:
    """The demo Fachdaten XML Schema (XSD)."""
    return resources.files(__package__).joinpath("antrag.xsd").read_bytes()


def demo_json_data(name: str = "Erika Mustermann") -> dict[str, object]:
    """A valid demo Antrag as JSON data."""
    return {
        "antragsteller": {
            "vorname": name.split(" ")[0],
            "familienname": name.split(" ")[-1],
            "geburtsdatum": "1964-08-12",
            "email": "erika.mustermann@example.org",
        },
        "anschrift": {
            "strasse": "Heidestraße",
            "hausnummer": "17",
            "postleitzahl": "51147",
            "ort": "Köln",
        },
        "anliegen": "Bitte um Bearbeitung meines Testantrags.",
    }


def demo_xml_data(name: str = "Erika Mustermann") -> bytes:
    """A valid demo Antrag as XML data."""
    first, last = name.split(" ")[0], name.split(" ")[-1]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<antrag xmlns="{DEMO_XML_NAMESPACE}">'
        f"<antragsteller><vorname>{first}</vorname><familienname>{last}</familienname>"
        "<geburtsdatum>1964-08-12</geburtsdatum>"
        "<email>erika.mustermann@example.org</email></antragsteller>"
        "<anschrift><strasse>Heidestraße</strasse><hausnummer>17</hausnummer>"
        "<postleitzahl>51147</postleitzahl><ort>Köln</ort></anschrift>"
        "<anliegen>Bitte um Bearbeitung meines Testantrags.</anliegen>"
        "</antrag>\n"
    ).encode()
