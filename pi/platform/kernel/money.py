"""Money: ISO 4217 currencies and amounts in integer minor units. Standard library only.

An amount is always an `int` of the currency's minor units (cents for USD, yen for JPY,
fils for KWD), never a float. Both services share these rules so that a transaction
and its payments agree on what a valid amount is.

Rules chosen here (the contracts are silent on them):

- A currency code is exactly three uppercase ASCII letters of an active ISO 4217 code
  that has minor units. Lowercase input is rejected, not normalised: a merchant who
  sends `usd` learns the canonical form once instead of relying on leniency.
- Codes without minor units (precious metals XAU/XAG/XPT/XPD, the bond-market units
  XBA..XBD, XDR, XSU, XUA, the test code XTS and "no currency" XXX) are not accepted:
  they are not money a card or a bank pays in. Withdrawn codes (HRK, ZWL, SLL, ANG) are
  not accepted either; their successors (EUR, ZWG, SLE, XCG) are.
- An amount is 1 ..= `MAX_AMOUNT` (10**15) minor units in every currency. The cap keeps
  any sum the ledgers compute (held + captured + new) far inside a signed 64-bit
  integer, and keeps every amount exactly representable as an IEEE-754 double
  (< 2**53), so JavaScript clients that parse the JSON string as a number lose nothing.
  It is deliberately loose (10 trillion USD, ~10 million USD worth of IRR) so that no
  real payment in a high-nominal currency is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from pi.platform.kernel.errors import InvalidArgument

__all__ = [
    "CURRENCIES",
    "INT64_MAX",
    "MAX_AMOUNT",
    "Currency",
    "amount_problem",
    "currency_problem",
    "format_amount",
    "get_currency",
    "parse_currency",
    "validate_amount",
]

INT64_MAX = 2**63 - 1
"""The largest value a proto `int64` / PostgreSQL `bigint` holds."""

MAX_AMOUNT = 10**15
"""The largest amount, in minor units, of one transaction, payment, capture or refund."""


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency: `code` "USD", `numeric` "840", `exponent` 2 (minor unit digits)."""

    code: str
    numeric: str
    exponent: int
    name: str

    @property
    def minor_per_major(self) -> int:
        """How many minor units make one major unit (100 for USD, 1 for JPY, 1000 for KWD)."""
        return _POWERS_OF_TEN[self.exponent]

    def __str__(self) -> str:
        return self.code


_POWERS_OF_TEN = (1, 10, 100, 1000, 10000)

# Active ISO 4217 list one entries with a minor unit (code, numeric, exponent, name).
_TABLE: tuple[tuple[str, str, int, str], ...] = (
    ("AED", "784", 2, "UAE Dirham"),
    ("AFN", "971", 2, "Afghani"),
    ("ALL", "008", 2, "Lek"),
    ("AMD", "051", 2, "Armenian Dram"),
    ("AOA", "973", 2, "Kwanza"),
    ("ARS", "032", 2, "Argentine Peso"),
    ("AUD", "036", 2, "Australian Dollar"),
    ("AWG", "533", 2, "Aruban Florin"),
    ("AZN", "944", 2, "Azerbaijan Manat"),
    ("BAM", "977", 2, "Convertible Mark"),
    ("BBD", "052", 2, "Barbados Dollar"),
    ("BDT", "050", 2, "Taka"),
    ("BGN", "975", 2, "Bulgarian Lev"),
    ("BHD", "048", 3, "Bahraini Dinar"),
    ("BIF", "108", 0, "Burundi Franc"),
    ("BMD", "060", 2, "Bermudian Dollar"),
    ("BND", "096", 2, "Brunei Dollar"),
    ("BOB", "068", 2, "Boliviano"),
    ("BOV", "984", 2, "Mvdol"),
    ("BRL", "986", 2, "Brazilian Real"),
    ("BSD", "044", 2, "Bahamian Dollar"),
    ("BTN", "064", 2, "Ngultrum"),
    ("BWP", "072", 2, "Pula"),
    ("BYN", "933", 2, "Belarusian Ruble"),
    ("BZD", "084", 2, "Belize Dollar"),
    ("CAD", "124", 2, "Canadian Dollar"),
    ("CDF", "976", 2, "Congolese Franc"),
    ("CHE", "947", 2, "WIR Euro"),
    ("CHF", "756", 2, "Swiss Franc"),
    ("CHW", "948", 2, "WIR Franc"),
    ("CLF", "990", 4, "Unidad de Fomento"),
    ("CLP", "152", 0, "Chilean Peso"),
    ("CNY", "156", 2, "Yuan Renminbi"),
    ("COP", "170", 2, "Colombian Peso"),
    ("COU", "970", 2, "Unidad de Valor Real"),
    ("CRC", "188", 2, "Costa Rican Colon"),
    ("CUC", "931", 2, "Peso Convertible"),
    ("CUP", "192", 2, "Cuban Peso"),
    ("CVE", "132", 2, "Cabo Verde Escudo"),
    ("CZK", "203", 2, "Czech Koruna"),
    ("DJF", "262", 0, "Djibouti Franc"),
    ("DKK", "208", 2, "Danish Krone"),
    ("DOP", "214", 2, "Dominican Peso"),
    ("DZD", "012", 2, "Algerian Dinar"),
    ("EGP", "818", 2, "Egyptian Pound"),
    ("ERN", "232", 2, "Nakfa"),
    ("ETB", "230", 2, "Ethiopian Birr"),
    ("EUR", "978", 2, "Euro"),
    ("FJD", "242", 2, "Fiji Dollar"),
    ("FKP", "238", 2, "Falkland Islands Pound"),
    ("GBP", "826", 2, "Pound Sterling"),
    ("GEL", "981", 2, "Lari"),
    ("GHS", "936", 2, "Ghana Cedi"),
    ("GIP", "292", 2, "Gibraltar Pound"),
    ("GMD", "270", 2, "Dalasi"),
    ("GNF", "324", 0, "Guinean Franc"),
    ("GTQ", "320", 2, "Quetzal"),
    ("GYD", "328", 2, "Guyana Dollar"),
    ("HKD", "344", 2, "Hong Kong Dollar"),
    ("HNL", "340", 2, "Lempira"),
    ("HTG", "332", 2, "Gourde"),
    ("HUF", "348", 2, "Forint"),
    ("IDR", "360", 2, "Rupiah"),
    ("ILS", "376", 2, "New Israeli Sheqel"),
    ("INR", "356", 2, "Indian Rupee"),
    ("IQD", "368", 3, "Iraqi Dinar"),
    ("IRR", "364", 2, "Iranian Rial"),
    ("ISK", "352", 0, "Iceland Krona"),
    ("JMD", "388", 2, "Jamaican Dollar"),
    ("JOD", "400", 3, "Jordanian Dinar"),
    ("JPY", "392", 0, "Yen"),
    ("KES", "404", 2, "Kenyan Shilling"),
    ("KGS", "417", 2, "Som"),
    ("KHR", "116", 2, "Riel"),
    ("KMF", "174", 0, "Comorian Franc"),
    ("KPW", "408", 2, "North Korean Won"),
    ("KRW", "410", 0, "Won"),
    ("KWD", "414", 3, "Kuwaiti Dinar"),
    ("KYD", "136", 2, "Cayman Islands Dollar"),
    ("KZT", "398", 2, "Tenge"),
    ("LAK", "418", 2, "Lao Kip"),
    ("LBP", "422", 2, "Lebanese Pound"),
    ("LKR", "144", 2, "Sri Lanka Rupee"),
    ("LRD", "430", 2, "Liberian Dollar"),
    ("LSL", "426", 2, "Loti"),
    ("LYD", "434", 3, "Libyan Dinar"),
    ("MAD", "504", 2, "Moroccan Dirham"),
    ("MDL", "498", 2, "Moldovan Leu"),
    ("MGA", "969", 2, "Malagasy Ariary"),
    ("MKD", "807", 2, "Denar"),
    ("MMK", "104", 2, "Kyat"),
    ("MNT", "496", 2, "Tugrik"),
    ("MOP", "446", 2, "Pataca"),
    ("MRU", "929", 2, "Ouguiya"),
    ("MUR", "480", 2, "Mauritius Rupee"),
    ("MVR", "462", 2, "Rufiyaa"),
    ("MWK", "454", 2, "Malawi Kwacha"),
    ("MXN", "484", 2, "Mexican Peso"),
    ("MXV", "979", 2, "Mexican Unidad de Inversion (UDI)"),
    ("MYR", "458", 2, "Malaysian Ringgit"),
    ("MZN", "943", 2, "Mozambique Metical"),
    ("NAD", "516", 2, "Namibia Dollar"),
    ("NGN", "566", 2, "Naira"),
    ("NIO", "558", 2, "Cordoba Oro"),
    ("NOK", "578", 2, "Norwegian Krone"),
    ("NPR", "524", 2, "Nepalese Rupee"),
    ("NZD", "554", 2, "New Zealand Dollar"),
    ("OMR", "512", 3, "Rial Omani"),
    ("PAB", "590", 2, "Balboa"),
    ("PEN", "604", 2, "Sol"),
    ("PGK", "598", 2, "Kina"),
    ("PHP", "608", 2, "Philippine Peso"),
    ("PKR", "586", 2, "Pakistan Rupee"),
    ("PLN", "985", 2, "Zloty"),
    ("PYG", "600", 0, "Guarani"),
    ("QAR", "634", 2, "Qatari Rial"),
    ("RON", "946", 2, "Romanian Leu"),
    ("RSD", "941", 2, "Serbian Dinar"),
    ("RUB", "643", 2, "Russian Ruble"),
    ("RWF", "646", 0, "Rwanda Franc"),
    ("SAR", "682", 2, "Saudi Riyal"),
    ("SBD", "090", 2, "Solomon Islands Dollar"),
    ("SCR", "690", 2, "Seychelles Rupee"),
    ("SDG", "938", 2, "Sudanese Pound"),
    ("SEK", "752", 2, "Swedish Krona"),
    ("SGD", "702", 2, "Singapore Dollar"),
    ("SHP", "654", 2, "Saint Helena Pound"),
    ("SLE", "925", 2, "Leone"),
    ("SOS", "706", 2, "Somali Shilling"),
    ("SRD", "968", 2, "Surinam Dollar"),
    ("SSP", "728", 2, "South Sudanese Pound"),
    ("STN", "930", 2, "Dobra"),
    ("SVC", "222", 2, "El Salvador Colon"),
    ("SYP", "760", 2, "Syrian Pound"),
    ("SZL", "748", 2, "Lilangeni"),
    ("THB", "764", 2, "Baht"),
    ("TJS", "972", 2, "Somoni"),
    ("TMT", "934", 2, "Turkmenistan New Manat"),
    ("TND", "788", 3, "Tunisian Dinar"),
    ("TOP", "776", 2, "Pa'anga"),
    ("TRY", "949", 2, "Turkish Lira"),
    ("TTD", "780", 2, "Trinidad and Tobago Dollar"),
    ("TWD", "901", 2, "New Taiwan Dollar"),
    ("TZS", "834", 2, "Tanzanian Shilling"),
    ("UAH", "980", 2, "Hryvnia"),
    ("UGX", "800", 0, "Uganda Shilling"),
    ("USD", "840", 2, "US Dollar"),
    ("USN", "997", 2, "US Dollar (Next day)"),
    ("UYI", "940", 0, "Uruguay Peso en Unidades Indexadas (UI)"),
    ("UYU", "858", 2, "Peso Uruguayo"),
    ("UYW", "927", 4, "Unidad Previsional"),
    ("UZS", "860", 2, "Uzbekistan Sum"),
    ("VED", "926", 2, "Bolivar Soberano (digital)"),
    ("VES", "928", 2, "Bolivar Soberano"),
    ("VND", "704", 0, "Dong"),
    ("VUV", "548", 0, "Vatu"),
    ("WST", "882", 2, "Tala"),
    ("XAF", "950", 0, "CFA Franc BEAC"),
    ("XCD", "951", 2, "East Caribbean Dollar"),
    ("XCG", "532", 2, "Caribbean Guilder"),
    ("XOF", "952", 0, "CFA Franc BCEAO"),
    ("XPF", "953", 0, "CFP Franc"),
    ("YER", "886", 2, "Yemeni Rial"),
    ("ZAR", "710", 2, "Rand"),
    ("ZMW", "967", 2, "Zambian Kwacha"),
    ("ZWG", "924", 2, "Zimbabwe Gold"),
)

CURRENCIES: MappingProxyType[str, Currency] = MappingProxyType(
    {code: Currency(code, numeric, exponent, name) for code, numeric, exponent, name in _TABLE}
)
"""Every accepted currency by code (read-only)."""


def get_currency(code: str) -> Currency | None:
    """The currency with exactly this code, or None (no normalisation: "usd" is None)."""
    return CURRENCIES.get(code)


def currency_problem(code: object) -> str | None:
    """Why `code` is not an accepted currency code, or None if it is.

    For collecting several violations with `ValidationErrors`; `parse_currency` raises.
    """
    if not isinstance(code, str) or code == "":
        return "is required: an ISO 4217 currency code such as USD"
    if len(code) != 3 or not (code.isascii() and code.isalpha() and code.isupper()):
        return "must be three uppercase letters, an ISO 4217 currency code such as USD"
    if code not in CURRENCIES:
        return f"{code} is not a supported ISO 4217 currency"
    return None


def parse_currency(code: str, field: str) -> Currency:
    """The currency for `code`, or InvalidArgument on `field` (e.g. `transaction.currency`)."""
    problem = currency_problem(code)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return CURRENCIES[code]


def amount_problem(amount: object) -> str | None:
    """Why `amount` (minor units) is not a valid amount, or None if it is.

    Valid: an `int` (not a bool) with 1 <= amount <= MAX_AMOUNT. For collecting several
    violations with `ValidationErrors`; `validate_amount` raises.
    """
    if isinstance(amount, bool) or not isinstance(amount, int):
        return "must be an integer number of minor units"
    if amount <= 0:
        return "must be greater than zero"
    if amount > MAX_AMOUNT:
        return f"must be at most {MAX_AMOUNT} minor units"
    return None


def validate_amount(amount: int, currency: Currency, field: str) -> int:
    """Return `amount` if it is a valid amount of `currency`, else raise InvalidArgument on `field`.

    `currency` is taken so the message can show the amount in major units, and so a future
    per-currency limit has its place; today the limit is MAX_AMOUNT for every currency.
    """
    problem = amount_problem(amount)
    if problem is not None:
        if problem.startswith("must be at most"):
            shown = format_amount(MAX_AMOUNT, currency)
            problem = f"must be at most {MAX_AMOUNT} minor units ({shown})"
        raise InvalidArgument.field(field, problem)
    return amount


def format_amount(amount: int, currency: Currency | str) -> str:
    """Render minor units in major units for people: (1234, USD) -> "12.34 USD".

    Exact (integer arithmetic, no float): (5, JPY) -> "5 JPY", (-1500, KWD) ->
    "-1.500 KWD". For logs, messages and docs only; the API always carries minor units.
    An unknown code string is shown with exponent 0 ("12 ABC").
    """
    if isinstance(currency, str):
        known = CURRENCIES.get(currency)
        code, exponent = currency, (known.exponent if known else 0)
    else:
        code, exponent = currency.code, currency.exponent
    sign = "-" if amount < 0 else ""
    magnitude = abs(amount)
    if exponent == 0:
        return f"{sign}{magnitude} {code}"
    major, minor = divmod(magnitude, _POWERS_OF_TEN[exponent])
    return f"{sign}{major}.{minor:0{exponent}d} {code}"
