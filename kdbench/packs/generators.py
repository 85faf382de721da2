"""Programmatic seeds with checkable answers, referenced by name from pack.yaml.

Each generator is seeded (same pack.yaml, same items) and returns rows with a
``reference`` answer computed here, so labels can be verified without a teacher
(``verify``): the dataset step drops teacher outputs that get them wrong, and
self-knowledge keeps only the student outputs that get them right.

Items are distinct, drawn from a finite space of parameters: each generator
says how many distinct items it can produce (``max_count``, counted from the
same ranges it draws from), and asking for more is refused up front instead of
drawing forever.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

Row = dict[str, str]


@dataclass(frozen=True)
class Generator:
    make: Callable[..., list[Row]]  # (count, seed) -> rows with id, prompt, reference, check
    default_topic: str
    description: str
    max_count: int  # distinct items it can produce (a lower bound where the space is beyond any count asked)


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _rows(
    name: str, count: int, seed: int, one: Callable[[random.Random], tuple[str, float]], max_count: int
) -> list[Row]:
    """``count`` distinct items drawn by ``one``, which can produce ``max_count`` distinct prompts: asking for
    more would draw forever, so it is refused."""
    if count > max_count:
        raise ValueError(f"{name} can produce at most {max_count:,} distinct items; {count:,} asked for")
    rng = random.Random(f"{name}:{seed}")
    rows, seen = [], set()
    while len(rows) < count:
        prompt, answer = one(rng)
        if prompt in seen:  # small parameter spaces can repeat; keep items distinct
            continue
        seen.add(prompt)
        rows.append(
            {
                "id": f"gen-{name}-{seed}-{len(rows):04d}",
                "prompt": prompt,
                "reference": f"{answer:.4g}" if abs(answer) < 1e-3 else f"{answer:.2f}",
                "check": "numeric",
            }
        )
    return rows


# ---- finance -----------------------------------------------------------------------


def compound_interest(count: int, seed: int = 0) -> list[Row]:
    def one(rng):
        p = rng.randrange(500, 20_001, 100)
        r = rng.choice([2, 2.5, 3, 4, 4.5, 5, 6, 7, 8])
        n = rng.randint(2, 15)
        k, label = rng.choice([(1, "annually"), (4, "quarterly"), (12, "monthly")])
        fv = p * (1 + r / 100 / k) ** (k * n)
        return (
            f"You deposit ${_money(p)} at {r}% annual interest compounded {label}. "
            f"What is the balance after {n} years, in dollars?",
            fv,
        )

    return _rows("compound_interest", count, seed, one, COMPOUND_INTEREST_MAX)


# principals x rates x years x compounding periods, as drawn above
COMPOUND_INTEREST_MAX = len(range(500, 20_001, 100)) * 9 * len(range(2, 16)) * 3


def npv(count: int, seed: int = 0) -> list[Row]:
    def one(rng):
        c0 = rng.randrange(1_000, 50_001, 500)
        flows = [rng.randrange(200, 20_001, 100) for _ in range(rng.randint(2, 5))]
        r = rng.choice([4, 5, 6, 8, 10, 12])
        value = -c0 + sum(cf / (1 + r / 100) ** t for t, cf in enumerate(flows, 1))
        listed = ", ".join(f"${_money(cf)}" for cf in flows)
        return (
            f"A project costs ${_money(c0)} today and returns {listed} at the end of years 1 to {len(flows)}. "
            f"At a discount rate of {r}%, what is its net present value in dollars?",
            value,
        )

    return _rows("npv", count, seed, one, NPV_MAX)


# costs x rates x cash-flow streams of 2 to 5 years
NPV_MAX = len(range(1_000, 50_001, 500)) * 6 * sum(len(range(200, 20_001, 100)) ** n for n in range(2, 6))


def ratios(count: int, seed: int = 0) -> list[Row]:
    def one(rng):
        kind = rng.choice(["current", "debt_to_equity", "roe", "gross_margin", "pe"])
        a, b = rng.randrange(100, 10_001, 10), rng.randrange(100, 10_001, 10)
        if kind == "current":
            return (
                f"A firm has current assets of ${_money(a)}k and current liabilities of ${_money(b)}k. "
                "What is its current ratio?",
                a / b,
            )
        if kind == "debt_to_equity":
            return (
                f"A company has total debt of ${_money(a)}k and shareholders' equity of ${_money(b)}k. "
                "What is its debt-to-equity ratio?",
                a / b,
            )
        if kind == "roe":
            ni = rng.randrange(10, 2_001, 5)
            return (
                f"Net income is ${_money(ni)}k and average shareholders' equity is ${_money(b)}k. "
                "What is the return on equity, in percent?",
                100 * ni / b,
            )
        if kind == "gross_margin":
            rev = max(a, b) + rng.randrange(10, 1_001, 10)
            cogs = min(a, b)
            return (
                f"Revenue is ${_money(rev)}k and cost of goods sold is ${_money(cogs)}k. "
                "What is the gross margin, in percent?",
                100 * (rev - cogs) / rev,
            )
        price, eps = rng.randrange(5, 401), rng.choice([0.5, 1, 1.25, 2, 2.5, 3, 4, 5, 8])
        return (
            f"A share trades at ${price} and earnings per share are ${eps}. What is the price-to-earnings ratio?",
            price / eps,
        )

    return _rows("ratios", count, seed, one, RATIOS_MAX)


# at least: the (a, b) pairs of the current ratio and of debt-to-equity alone
RATIOS_MAX = 2 * len(range(100, 10_001, 10)) ** 2


# ---- science -----------------------------------------------------------------------

_CONVERSIONS = [  # (from, to, factor or function, range)
    ("kilometers", "meters", lambda x: x * 1000, (1, 50)),
    ("meters", "centimeters", lambda x: x * 100, (1, 300)),
    ("miles", "kilometers", lambda x: x * 1.609344, (1, 200)),
    ("kilograms", "pounds", lambda x: x / 0.45359237, (1, 150)),
    ("liters", "milliliters", lambda x: x * 1000, (1, 20)),
    ("hours", "seconds", lambda x: x * 3600, (1, 24)),
    ("degrees Celsius", "degrees Fahrenheit", lambda x: x * 9 / 5 + 32, (-40, 100)),
    ("degrees Celsius", "kelvin", lambda x: x + 273.15, (-200, 500)),
    ("kilometers per hour", "meters per second", lambda x: x / 3.6, (5, 200)),
    ("atmospheres", "kilopascals", lambda x: x * 101.325, (1, 10)),
]

_MOLAR = {
    "H2": 2.016,
    "O2": 31.998,
    "H2O": 18.015,
    "CO2": 44.009,
    "CH4": 16.043,
    "NaCl": 58.44,
    "Na": 22.990,
    "Cl2": 70.90,
    "N2": 28.014,
    "NH3": 17.031,
    "C": 12.011,
    "CaCO3": 100.086,
    "CaO": 56.077,
    "Fe": 55.845,
    "Fe2O3": 159.687,
}
# balanced reactions: (reactant, product, mol product per mol reactant, equation)
_REACTIONS = [
    ("H2", "H2O", 1.0, "2 H2 + O2 -> 2 H2O"),
    ("CH4", "CO2", 1.0, "CH4 + 2 O2 -> CO2 + 2 H2O"),
    ("CH4", "H2O", 2.0, "CH4 + 2 O2 -> CO2 + 2 H2O"),
    ("Na", "NaCl", 1.0, "2 Na + Cl2 -> 2 NaCl"),
    ("N2", "NH3", 2.0, "N2 + 3 H2 -> 2 NH3"),
    ("C", "CO2", 1.0, "C + O2 -> CO2"),
    ("CaCO3", "CaO", 1.0, "CaCO3 -> CaO + CO2"),
    ("Fe", "Fe2O3", 0.5, "4 Fe + 3 O2 -> 2 Fe2O3"),
]


def unit_conversion(count: int, seed: int = 0) -> list[Row]:
    def one(rng):
        src, dst, f, (lo, hi) = rng.choice(_CONVERSIONS)
        x = rng.randint(lo, hi)
        return f"Convert {x} {src} to {dst}.", f(x)

    return _rows("unit_conversion", count, seed, one, UNIT_CONVERSION_MAX)


UNIT_CONVERSION_MAX = sum(hi - lo + 1 for *_conversion, (lo, hi) in _CONVERSIONS)


def kinematics(count: int, seed: int = 0) -> list[Row]:
    g = 9.81

    def one(rng):
        kind = rng.choice(["final_velocity", "distance", "fall_time"])
        if kind == "final_velocity":
            u, a, t = rng.randint(0, 30), rng.choice([0.5, 1, 1.5, 2, 2.5, 3, 4]), rng.randint(2, 20)
            return (
                f"An object moving at {u} m/s accelerates uniformly at {a} m/s^2 for {t} s. "
                "What is its final speed in m/s?",
                u + a * t,
            )
        if kind == "distance":
            u, a, t = rng.randint(0, 20), rng.choice([0.5, 1, 2, 3]), rng.randint(2, 15)
            return (
                f"A cart starts at {u} m/s and accelerates uniformly at {a} m/s^2. "
                f"How far does it travel in {t} s, in meters?",
                u * t + 0.5 * a * t * t,
            )
        h = rng.randint(2, 200)
        return (
            f"Ignoring air resistance (g = 9.81 m/s^2), how many seconds does an object take to fall {h} m from rest?",
            (2 * h / g) ** 0.5,
        )

    return _rows("kinematics", count, seed, one, KINEMATICS_MAX)


# final speed (u x a x t) + distance (u x a x t) + fall time (h), as drawn above
KINEMATICS_MAX = 31 * 7 * 19 + 21 * 4 * 14 + 199


def stoichiometry(count: int, seed: int = 0) -> list[Row]:
    def one(rng):
        reactant, product, ratio, eq = rng.choice(_REACTIONS)
        grams = rng.randint(1, 200)
        out = grams / _MOLAR[reactant] * ratio * _MOLAR[product]
        return (
            f"For the reaction {eq}, how many grams of {product} form from {grams} g of {reactant} "
            "with the other reactants in excess?",
            out,
        )

    return _rows("stoichiometry", count, seed, one, STOICHIOMETRY_MAX)


STOICHIOMETRY_MAX = len(_REACTIONS) * 200  # reactions x grams 1..200


GENERATORS: dict[str, Generator] = {
    "compound_interest": Generator(
        compound_interest, "personal_finance", "future value with periodic compounding", COMPOUND_INTEREST_MAX
    ),
    "npv": Generator(npv, "corporate_finance", "net present value of a cash-flow stream", NPV_MAX),
    "ratios": Generator(ratios, "accounting", "current, debt-to-equity, ROE, gross margin, P/E", RATIOS_MAX),
    "unit_conversion": Generator(unit_conversion, "physics", "SI and customary unit conversions", UNIT_CONVERSION_MAX),
    "kinematics": Generator(kinematics, "physics", "uniform acceleration and free fall", KINEMATICS_MAX),
    "stoichiometry": Generator(stoichiometry, "chemistry", "product mass from reactant mass", STOICHIOMETRY_MAX),
}

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


def verify(output: str, reference: str, check: str | None, rel_tol: float = 0.01) -> bool:
    """Is ``output`` right? numeric: its last number is within rel_tol of the reference."""
    if check == "numeric":
        nums = _NUMBER.findall(output)
        if not nums:
            return False
        try:
            got = float(nums[-1].replace(",", "").rstrip("."))
        except ValueError:
            return False
        ref = float(reference.replace(",", ""))
        return abs(got - ref) <= rel_tol * max(abs(ref), 1e-9)
    return " ".join(output.lower().split()) == " ".join(reference.lower().split())
