"""Container names: Docker's rule for what a name may be, and Docker's random names
(adjective_noun) for containers created without one."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable

from lamina.errors import LaminaError

_NAME_RE = r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$"  # compiled by re when first used


def validate_name(name: str) -> str:
    """``name`` without a leading ``/``; LaminaError when Docker would refuse it."""
    if not re.match(_NAME_RE, name):
        raise LaminaError(
            f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    return name.lstrip("/")


def new_id() -> str:
    return os.urandom(32).hex()


# Docker-style random names: adjective_noun, with a number on collision.
_ADJECTIVE_WORDS = (
    "admiring adoring affectionate agitated amazing angry awesome beautiful blissful bold "
    "boring brave busy charming clever compassionate competent condescending confident cool "
    "cranky crazy dazzling determined distracted dreamy eager ecstatic elastic elated elegant "
    "eloquent epic exciting fervent festive flamboyant focused friendly frosty funny gallant "
    "gifted goofy gracious great happy hardcore heuristic hopeful hungry infallible inspiring "
    "intelligent interesting jolly jovial keen kind laughing loving lucid magical modest "
    "musing mystifying naughty nervous nice nifty nostalgic objective optimistic peaceful "
    "pedantic pensive practical priceless quirky quizzical recursing relaxed reverent romantic "
    "sad serene sharp silly sleepy stoic strange stupefied suspicious sweet tender thirsty "
    "trusting unruffled upbeat vibrant vigilant vigorous wizardly wonderful xenodochial "
    "youthful zealous zen"
)
_NOUN_WORDS = (
    "agnesi albattani allen almeida antonelli archimedes ardinghelli aryabhata austin babbage "
    "banach bardeen bartik bassi beaver bell benz bhabha bhaskara black blackburn blackwell "
    "bohr booth borg bose bouman boyd brahmagupta brattain brown buck burnell cannon carson "
    "cartwright carver cerf chandrasekhar chaplygin chatelet chatterjee chaum chebyshev "
    "clarke cohen colden cori cray curie darwin davinci dewdney dhawan diffie dijkstra dirac "
    "driscoll dubinsky easley edison einstein elbakyan elgamal elion ellis engelbart euclid "
    "euler faraday feistel fermat fermi feynman franklin gagarin galileo galois ganguly gates "
    "gauss germain goldberg goldstine goldwasser golick goodall gould greider grothendieck "
    "haibt hamilton haslett hawking heisenberg hellman hermann herschel hertz heyrovsky "
    "hodgkin hofstadter hoover hopper hugle hypatia jackson jang jemison jennings jepsen "
    "johnson joliot jones kalam kapitsa kare keldysh keller kepler khayyam khorana kilby "
    "kirch knuth kowalevski lalande lamarr lamport leakey leavitt lederberg lehmann lewin "
    "lichterman liskov lovelace lumiere mahavira margulis matsumoto maxwell mayer mccarthy "
    "mcclintock mclaren mclean mcnulty meitner mendel mendeleev meninsky merkle mestorf "
    "mirzakhani montalcini moore morse moser murdock napier nash neumann newton nightingale "
    "nobel noether northcutt noyce panini pare pascal pasteur payne perlman pike poincare "
    "poitras proskuriakova ptolemy raman ramanujan rhodes ride ritchie robinson roentgen "
    "rosalind rubin saha sammet sanderson satoshi shamir shannon shaw shirley shockley shtern "
    "sinoussi snyder solomon spence stonebraker sutherland swanson swartz swirles taussig "
    "tesla tharp thompson torvalds tu turing varahamihira vaughan villani visvesvaraya "
    "volhard wescoff wilbur wiles williams williamson wilson wing wozniak wright wu yalow "
    "yonath zhukovsky"
)
_ADJECTIVES = _ADJECTIVE_WORDS.split()
_NOUNS = _NOUN_WORDS.split()
# Not the secrets module: it costs an OpenSSL import on the run hot path.
_rng = random.SystemRandom()


def random_name(taken: Callable[[str], bool]) -> str:
    """A free adjective_noun name; ``taken(name) -> bool`` says whether one is in use."""
    for attempt in range(50):
        name = f"{_rng.choice(_ADJECTIVES)}_{_rng.choice(_NOUNS)}"
        if attempt >= 10:
            name += str(_rng.randrange(100))
        if not taken(name):
            return name
    return f"lamina_{os.urandom(6).hex()}"
