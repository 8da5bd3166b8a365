/* ringd.plugins._scan: the scan of ringd.plugins._detect.Detector.find.
 *
 * A port of the Python scanner in _detect.py (the reference, and the fallback where this
 * module is not built): each detector is a hand-written byte scanner giving exactly the
 * matches its regex gives there (the same leftmost match, the same backtracking
 * choice), added in the same order under the same overlap rule. The comment above each
 * detector says how its regex reads; tests/plugins/test_detect_native.py compares the
 * two scanners on generated texts.
 *
 * Safety: the text is attacker-chosen. Every read past the end goes through AT(), which
 * gives 0 there (NUL is in no character class, so the end reads as a NUL would); no
 * recursion; every scan is linear (runs of one class are measured once, through a cache
 * where several candidates share one run).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The module's ABI, which plugins/_detect.py checks at import (_NATIVE_ABI there): an
 * extension built from another version of this file is not used, the Python scanner is.
 * Bump it, and _NATIVE_ABI with it, whenever a function's contract changes: one added or
 * removed, its arguments, its results or what it refuses. */
#define SCAN_ABI 2

/* Kinds, in precedence order (their index is the bit of the kind mask). */
enum { K_SECRET, K_EMAIL, K_CARD, K_IBAN, K_IP, K_PHONE, K_COUNT };

/* Character classes (ASCII; a byte >= 128 never occurs: a non-ASCII text is scanned as its
 * plain copy, each non-ASCII character "?"; the e-mail scan alone looks at the original). */
enum {
    C_DIGIT = 1,
    C_UPPER = 2,
    C_LOWER = 4,
    C_UNDER = 8,  /* _ */
    C_DASH = 16,  /* - */
    C_HEX = 32,   /* [0-9A-Fa-f] */
    C_SPACE = 64, /* \s with re.ASCII: [ \t\n\r\f\v] */
    C_LOCAL = 128 /* an e-mail local part: [\w.%+-] */
};
#define C_ALNUM (C_DIGIT | C_UPPER | C_LOWER)
#define C_WORD (C_ALNUM | C_UNDER)
static uint8_t CLS[256];

typedef struct {
    Py_ssize_t start, end;
    int kind;
} Hit;

typedef struct {
    const unsigned char *s;
    Py_ssize_t n;
    unsigned char *taken; /* a byte per character: 1 where a finding is */
    /* the places of the secret patterns' anchors, by pattern (ANCHORS), each in order */
    Py_ssize_t *anchors;
    /* the digit clusters with 4 digits or more: (first digit, after the last, digits) */
    Py_ssize_t *clusters;
    Py_ssize_t cluster_count;
    Py_ssize_t anchor_lo[19], anchor_hi[19];
    Hit *hits;
    Py_ssize_t count, cap;
    /* A text with non-ASCII characters: s is its plain copy (each one "?", owned here),
     * ukind/udata the original's, which the e-mail classes read (0/NULL: an ASCII text). */
    unsigned char *plain;
    int ukind;
    const void *udata;
} Scan;

/* The run of a class from p to its end; candidates sharing a run measure it once. */
typedef struct {
    Py_ssize_t lo, hi;
} RunCache;

#define AT(i) ((i) < n ? s[i] : 0)
#define IS(c, mask) ((CLS[(unsigned char)(c)] & (mask)) != 0)

static Py_ssize_t run_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t p, uint8_t mask, RunCache *cache) {
    if (cache != NULL && p >= cache->lo && p <= cache->hi) {
        return cache->hi;
    }
    Py_ssize_t q = p;
    while (q < n && IS(s[q], mask)) {
        q++;
    }
    if (cache != NULL) {
        cache->lo = p;
        cache->hi = q;
    }
    return q;
}

static Py_ssize_t find_literal(const unsigned char *s, Py_ssize_t n, Py_ssize_t from, const char *lit,
                               Py_ssize_t size) {
    if (from < 0 || from > n - size) {
        return -1;
    }
    const unsigned char *hit = memmem(s + from, (size_t)(n - from), lit, (size_t)size);
    return hit == NULL ? -1 : (Py_ssize_t)(hit - s);
}

static int starts_with(const unsigned char *s, Py_ssize_t n, Py_ssize_t at, const char *lit) {
    Py_ssize_t size = (Py_ssize_t)strlen(lit);
    return at >= 0 && at <= n - size && memcmp(s + at, lit, (size_t)size) == 0;
}

/* Spans.add: a finding unless it is empty or overlaps one taken. -1 on no memory. */
static int add(Scan *sc, int kind, Py_ssize_t start, Py_ssize_t end) {
    if (end <= start || start < 0 || end > sc->n) {
        return 0;
    }
    const unsigned char *taken = sc->taken;
    for (Py_ssize_t i = start; i < end; i++) {
        if (taken[i]) {
            return 0;
        }
    }
    if (sc->count == sc->cap) {
        Py_ssize_t cap = sc->cap ? sc->cap * 2 : 64;
        Hit *grown = PyMem_Realloc(sc->hits, (size_t)cap * sizeof(Hit));
        if (grown == NULL) {
            return -1;
        }
        sc->hits = grown;
        sc->cap = cap;
    }
    memset(sc->taken + start, 1, (size_t)(end - start));
    sc->hits[sc->count].start = start;
    sc->hits[sc->count].end = end;
    sc->hits[sc->count].kind = kind;
    sc->count++;
    return 1;
}

#define ADD(kind, start, end)                     \
    do {                                          \
        if (add(sc, (kind), (start), (end)) < 0) { \
            return -1;                            \
        }                                         \
    } while (0)

/* --------------------------------------------------------------------------- secrets */

/* The literal each secret pattern starts with (the names and "bearer" in any case), found
 * in one pass: a bitmap of their first two characters, then the literals compared. */
enum { A_PEM, A_TOKENS, A_BEARER = A_TOKENS + 10, A_NAMES, A_COUNT = A_NAMES + 7 };
static const struct {
    const char *literal;
    int any_case;
} ANCHORS[A_COUNT] = {
    {"-----BEGIN", 0}, {"sk-", 0},  {"sk_", 0},    {"rk_", 0},    {"AKIA", 0},     {"ASIA", 0},   {"gh", 0},
    {"github_pat_", 0}, {"xox", 0}, {"AIza", 0},   {"eyJ", 0},    {"bearer", 1},   {"api", 1},    {"secret", 1},
    {"access", 1},     {"auth", 1}, {"password", 1}, {"passwd", 1}, {"pwd", 1},
};
static uint8_t ANCHOR_PAIRS[65536 / 8];
static uint32_t ANCHORS_BY_FIRST[256]; /* the anchors a character can start (a bit each) */
static Py_ssize_t ANCHOR_SIZES[A_COUNT];

static unsigned char lower(unsigned char c) { return (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c); }

static int literal_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, const char *lit, int any_case) {
    Py_ssize_t size = (Py_ssize_t)strlen(lit);
    if (i < 0 || i > n - size) {
        return 0;
    }
    if (!any_case) {
        return memcmp(s + i, lit, (size_t)size) == 0;
    }
    for (Py_ssize_t k = 0; k < size; k++) {
        if (lower(s[i + k]) != (unsigned char)lit[k]) {
            return 0;
        }
    }
    return 1;
}

static void anchor_pairs_init(void) {
    for (int a = 0; a < A_COUNT; a++) {
        const unsigned char *lit = (const unsigned char *)ANCHORS[a].literal;
        ANCHOR_SIZES[a] = (Py_ssize_t)strlen(ANCHORS[a].literal);
        ANCHORS_BY_FIRST[lit[0]] |= 1u << a;
        if (ANCHORS[a].any_case) {
            ANCHORS_BY_FIRST[lit[0] - 32u] |= 1u << a;
        }
        for (int upper0 = 0; upper0 < 2; upper0++) {
            for (int upper1 = 0; upper1 < 2; upper1++) {
                if ((upper0 || upper1) && !ANCHORS[a].any_case) {
                    continue;
                }
                unsigned c0 = upper0 && lit[0] >= 'a' && lit[0] <= 'z' ? lit[0] - 32u : lit[0];
                unsigned c1 = upper1 && lit[1] >= 'a' && lit[1] <= 'z' ? lit[1] - 32u : lit[1];
                unsigned key = c0 | c1 << 8;
                ANCHOR_PAIRS[key >> 3] |= (uint8_t)(1u << (key & 7));
            }
        }
    }
}

/* Each anchor at i (whose first two characters are a pair of ANCHOR_PAIRS): place(a, i). */
#define FOR_EACH_ANCHOR(s, n, place)                                                                               \
    for (Py_ssize_t i = 0; i + 1 < (n); i++) {                                                                     \
        unsigned key = (s)[i] | (unsigned)(s)[i + 1] << 8;                                                         \
        if (!(ANCHOR_PAIRS[key >> 3] & (1u << (key & 7)))) {                                                       \
            continue;                                                                                              \
        }                                                                                                          \
        for (uint32_t bits = ANCHORS_BY_FIRST[(s)[i]]; bits; bits &= bits - 1) {                                   \
            int a = __builtin_ctz(bits);                                                                           \
            if (i + ANCHOR_SIZES[a] <= (n) && literal_at((s), (n), i, ANCHORS[a].literal, ANCHORS[a].any_case)) { \
                place;                                                                                             \
            }                                                                                                      \
        }                                                                                                          \
    }

/* Fills sc->anchors: the places of each anchor, pattern by pattern, in order. -1: no memory.
 * Two passes (count, then fill): a text dense with anchors ("ghgh...": one per two
 * characters) costs 8 bytes per anchor, no list of (place, anchor) pairs grown by doubling. */
static int collect_anchors(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t per[A_COUNT] = {0};
    FOR_EACH_ANCHOR(s, n, per[a]++)
    Py_ssize_t next[A_COUNT];
    Py_ssize_t at = 0;
    for (int a = 0; a < A_COUNT; a++) {
        sc->anchor_lo[a] = next[a] = at;
        at += per[a];
        sc->anchor_hi[a] = at;
    }
    sc->anchors = PyMem_Malloc((size_t)(at ? at : 1) * sizeof(Py_ssize_t));
    if (sc->anchors == NULL) {
        return -1;
    }
    Py_ssize_t *anchors = sc->anchors;
    FOR_EACH_ANCHOR(s, n, anchors[next[a]++] = i)
    return 0;
}

/* The first place of anchor a at or after pos (a cursor over its places), or -1. */
static Py_ssize_t next_anchor(const Scan *sc, int a, Py_ssize_t *cursor, Py_ssize_t pos) {
    while (*cursor < sc->anchor_hi[a] && sc->anchors[*cursor] < pos) {
        (*cursor)++;
    }
    return *cursor < sc->anchor_hi[a] ? sc->anchors[*cursor] : -1;
}

/* "-----BEGIN" or "-----END" (prefix) at i, then [A-Z0-9 ]*PRIVATE KEY-----: the class run
 * holds "PRIVATE KEY" and stops at the "-", so the run must end in it. Its end, or -1. */
static Py_ssize_t pem_line(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t prefix) {
    Py_ssize_t r = i + prefix;
    while (r < n && (IS(s[r], C_UPPER | C_DIGIT) || s[r] == ' ')) {
        r++;
    }
    if (r - (i + prefix) >= 11 && memcmp(s + r - 11, "PRIVATE KEY", 11) == 0 && starts_with(s, n, r, "-----")) {
        return r + 5;
    }
    return -1;
}

static int private_keys(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t end_line = -2, nul = -2, pos = 0, cursor = sc->anchor_lo[A_PEM];
    for (;;) {
        Py_ssize_t index = next_anchor(sc, A_PEM, &cursor, pos);
        if (index < 0) {
            return 0;
        }
        Py_ssize_t head_end = pem_line(s, n, index, 10);
        if (head_end < 0) {
            pos = index + 1;
            continue;
        }
        if (end_line != -1 && end_line < head_end) {
            end_line = find_literal(s, n, head_end, "-----END", 8);
        }
        Py_ssize_t end = -1;
        if (end_line != -1) {
            /* no NUL between the head and the END line (the first NUL after the head, cached) */
            if (nul != -1 && nul < head_end) {
                const unsigned char *z = memchr(s + head_end, 0, (size_t)(n - head_end));
                nul = z == NULL ? -1 : (Py_ssize_t)(z - s);
            }
            if (nul == -1 || nul >= end_line) {
                end = pem_line(s, n, end_line, 8);
            }
        }
        if (end == -1) { /* [A-Za-z0-9+/=\s]* */
            end = head_end;
            while (end < n && (IS(s[end], C_ALNUM | C_SPACE) || s[end] == '+' || s[end] == '/' || s[end] == '=')) {
                end++;
            }
        }
        ADD(K_SECRET, index, end);
        pos = end;
    }
}

/* Each token pattern at i (its anchor there), with (?![\w-]) after: its end, or -1. */
typedef Py_ssize_t (*TokenMatch)(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *caches);

/* sk-(?:proj-|ant-|svcacct-)?[\w-]{20,}: the class is [\w-], so the run goes to its end
 * whatever the prefix; 20 after "sk-" is the weaker bound. */
static Py_ssize_t tok_sk_dash(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    Py_ssize_t r = run_end(s, n, i + 3, C_WORD | C_DASH, &c[0]);
    return r - (i + 3) >= 20 ? r : -1;
}

/* [sr]k_(?:live|test)_[A-Za-z0-9]{16,}: the run then neither "_" nor "-". */
static Py_ssize_t tok_stripe(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    if (!starts_with(s, n, i + 3, "live_") && !starts_with(s, n, i + 3, "test_")) {
        return -1;
    }
    Py_ssize_t r = run_end(s, n, i + 8, C_ALNUM, &c[0]);
    return r - (i + 8) >= 16 && AT(r) != '_' && AT(r) != '-' ? r : -1;
}

/* A four-character anchor at i, then exactly `count` characters of class `mask`, then
 * neither [\w-]: the end, or -1. */
static Py_ssize_t fixed_token(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t count,
                              uint8_t mask) {
    Py_ssize_t end = i + 4 + count;
    for (Py_ssize_t k = i + 4; k < end; k++) {
        if (!IS(AT(k), mask)) {
            return -1;
        }
    }
    return IS(AT(end), C_WORD | C_DASH) ? -1 : end;
}

/* A[KS]IA[0-9A-Z]{16} */
static Py_ssize_t tok_aws(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    (void)c;
    return fixed_token(s, n, i, 16, C_UPPER | C_DIGIT);
}

/* gh[pousr]_[A-Za-z0-9]{36,} */
static Py_ssize_t tok_github(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    unsigned char kind = AT(i + 2);
    if (!(kind == 'p' || kind == 'o' || kind == 'u' || kind == 's' || kind == 'r') || AT(i + 3) != '_') {
        return -1;
    }
    Py_ssize_t r = run_end(s, n, i + 4, C_ALNUM, &c[0]);
    return r - (i + 4) >= 36 && AT(r) != '_' && AT(r) != '-' ? r : -1;
}

/* github_pat_[A-Za-z0-9_]{22,} */
static Py_ssize_t tok_github_pat(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    Py_ssize_t r = run_end(s, n, i + 11, C_WORD, &c[0]);
    return r - (i + 11) >= 22 && AT(r) != '-' ? r : -1;
}

/* xox[abprs]-[A-Za-z0-9-]{10,} */
static Py_ssize_t tok_slack(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    unsigned char kind = AT(i + 3);
    if (!(kind == 'a' || kind == 'b' || kind == 'p' || kind == 'r' || kind == 's') || AT(i + 4) != '-') {
        return -1;
    }
    Py_ssize_t r = run_end(s, n, i + 5, C_ALNUM | C_DASH, &c[0]);
    return r - (i + 5) >= 10 && AT(r) != '_' ? r : -1;
}

/* AIza[0-9A-Za-z_-]{35} */
static Py_ssize_t tok_google(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    (void)c;
    return fixed_token(s, n, i, 35, C_WORD | C_DASH);
}

/* eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}: each run stops at a "." (not in the class). */
static Py_ssize_t tok_jwt(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *c) {
    Py_ssize_t r1 = run_end(s, n, i + 3, C_WORD | C_DASH, &c[0]);
    if (r1 - (i + 3) < 8 || AT(r1) != '.' || !starts_with(s, n, r1 + 1, "eyJ")) {
        return -1;
    }
    Py_ssize_t r2 = run_end(s, n, r1 + 4, C_WORD | C_DASH, &c[1]);
    if (r2 - (r1 + 4) < 8 || AT(r2) != '.') {
        return -1;
    }
    Py_ssize_t r3 = run_end(s, n, r2 + 1, C_WORD | C_DASH, &c[2]);
    return r3 - (r2 + 1) >= 8 ? r3 : -1;
}

static const struct {
    const char *anchor;
    TokenMatch match;
} TOKENS[] = {
    {"sk-", tok_sk_dash}, {"sk_", tok_stripe},       {"rk_", tok_stripe}, {"AKIA", tok_aws},    {"ASIA", tok_aws},
    {"gh", tok_github},   {"github_pat_", tok_github_pat}, {"xox", tok_slack},  {"AIza", tok_google}, {"eyJ", tok_jwt},
};

static int tokens(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    for (size_t t = 0; t < sizeof(TOKENS) / sizeof(TOKENS[0]); t++) {
        int a = A_TOKENS + (int)t;
        RunCache caches[3] = {{-1, -2}, {-1, -2}, {-1, -2}};
        Py_ssize_t pos = 0, cursor = sc->anchor_lo[a];
        Py_ssize_t i;
        /* finditer: a match (taken or not) resumes the search at its end */
        while ((i = next_anchor(sc, a, &cursor, pos)) >= 0) {
            Py_ssize_t end = TOKENS[t].match(s, n, i, caches);
            if (end < 0) {
                pos = i + 1;
                continue;
            }
            if (i == 0 || !IS(s[i - 1], C_WORD | C_DASH)) {
                ADD(K_SECRET, i, end);
            }
            pos = end;
        }
    }
    return 0;
}

/* [a-z0-9._~+/-] on the lower-cased text (Python's pass): letters of either case here */
static int bearer_char(unsigned char c) {
    return IS(c, C_ALNUM) || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '-';
}

/* bearer\s+([a-z0-9._~+/-]{16,}=*) on the lower-cased text (here: "bearer" in any case, the
 * classes with capitals), not after a word character. */
static int bearers(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t pos = 0, i, cursor = sc->anchor_lo[A_BEARER];
    while ((i = next_anchor(sc, A_BEARER, &cursor, pos)) >= 0) {
        Py_ssize_t q = run_end(s, n, i + 6, C_SPACE, NULL);
        Py_ssize_t r = q;
        while (r < n && bearer_char(s[r])) {
            r++;
        }
        if (q == i + 6 || r - q < 16) {
            pos = i + 1;
            continue;
        }
        Py_ssize_t e = r;
        while (e < n && s[e] == '=') {
            e++;
        }
        if (i == 0 || !IS(s[i - 1], C_WORD)) {
            ADD(K_SECRET, q, e);
        }
        pos = e;
    }
    return 0;
}

/* The end of an assignment name at i (the literal start is there), or -1. */
static Py_ssize_t name_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, int which) {
    switch (which) {
    case 0: /* api[_-]?key */
    case 2: /* access[_-]?token */
    case 3: /* auth[_-]?token */ {
        Py_ssize_t p = i + (which == 0 ? 3 : which == 2 ? 6 : 4);
        const char *rest = which == 0 ? "key" : "token";
        if (AT(p) == '_' || AT(p) == '-') {
            p++;
        }
        return literal_at(s, n, p, rest, 1) ? p + (Py_ssize_t)strlen(rest) : -1;
    }
    case 1: /* secret(?:[_-]?key)? */ {
        Py_ssize_t p = i + 6;
        Py_ssize_t q = p + (AT(p) == '_' || AT(p) == '-');
        return literal_at(s, n, q, "key", 1) ? q + 3 : p;
    }
    case 4:
        return i + 8; /* password */
    case 5:
        return i + 6; /* passwd */
    default:
        return i + 3; /* pwd */
    }
}

/* NAME\b["']?\s*[:=]\s*["']?([^\s"',;\x00]{8,}) on the lower-cased text (here: the name in any
 * case), per name in order;
 * no step has two ways to read the text, so the first reading is the match. */
static int assignments(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    for (int which = 0; which < 7; which++) {
        Py_ssize_t pos = 0, i, cursor = sc->anchor_lo[A_NAMES + which];
        while ((i = next_anchor(sc, A_NAMES + which, &cursor, pos)) >= 0) {
            pos = i + 1;
            Py_ssize_t p = name_end(s, n, i, which);
            if (p < 0 || IS(AT(p), C_WORD)) {
                continue;
            }
            if (AT(p) == '"' || AT(p) == '\'') {
                p++;
            }
            p = run_end(s, n, p, C_SPACE, NULL);
            if (AT(p) != ':' && AT(p) != '=') {
                continue;
            }
            p = run_end(s, n, p + 1, C_SPACE, NULL);
            if (AT(p) == '"' || AT(p) == '\'') {
                p++;
            }
            Py_ssize_t r = p;
            int has_digit = 0, has_alpha = 0;
            while (r < n) {
                unsigned char c = s[r];
                if (c == 0 || c == '"' || c == '\'' || c == ',' || c == ';' || IS(c, C_SPACE)) {
                    break;
                }
                has_digit |= IS(c, C_DIGIT);
                has_alpha |= IS(c, C_UPPER | C_LOWER);
                r++;
            }
            if (r - p < 8) {
                continue;
            }
            if ((i == 0 || !IS(s[i - 1], C_WORD)) && has_digit && has_alpha) {
                ADD(K_SECRET, p, r);
            }
            pos = r;
        }
    }
    return 0;
}

/* --------------------------------------------------------------------------- e-mail */

/* The class of character i (< n) for the e-mail patterns, which are Unicode ones: where the
 * plain copy has "?" for a non-ASCII character, what sre's Unicode classes make of it
 * (\w: Py_UNICODE_ISALNUM or "_"; \d: Py_UNICODE_ISDECIMAL): C_DIGIT for a decimal,
 * C_LOWER for any other alphanumeric ([^\W\d_], a letter here), both with C_LOCAL. */
static uint8_t email_class_wide(const Scan *sc, Py_ssize_t i) {
    if (sc->udata == NULL) {
        return CLS['?'];
    }
    Py_UCS4 ch = PyUnicode_READ(sc->ukind, sc->udata, i);
    if (ch < 128) {
        return CLS[ch];
    }
    /* CPython's predicates cost four table look-ups a character; a text repeats its
     * non-ASCII characters, so the answers are kept in a small direct-mapped cache (the
     * GIL is held: one scan at a time; a slot's key is 0 until filled, and 0 is ASCII). */
    static Py_UCS4 cached_char[1024];
    static uint8_t cached_class[1024];
    unsigned slot = (unsigned)ch & 1023u;
    if (cached_char[slot] == ch) {
        return cached_class[slot];
    }
    uint8_t cls = Py_UNICODE_ISDECIMAL(ch) ? C_DIGIT | C_LOCAL : Py_UNICODE_ISALNUM(ch) ? C_LOWER | C_LOCAL : 0;
    cached_char[slot] = ch;
    cached_class[slot] = cls;
    return cls;
}

/* Whether character i (< n) is in the e-mail class mask: a table lookup, then, where that
 * says no, a look at the original if the plain copy has "?" there (a non-ASCII character). */
#define EIS_IN(i, mask) \
    ((CLS[s[i]] & (mask)) != 0 || (s[i] == '?' && (email_class_wide(sc, (i)) & (mask)) != 0))
/* The same for any i (past the end: no). */
#define EIS(i, mask) ((i) < n && EIS_IN((i), (mask)))

static Py_ssize_t email_run_end(const Scan *sc, Py_ssize_t p, uint8_t mask) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    while (EIS(p, mask)) {
        p++;
    }
    return p;
}

/* [^\W\d_]{2,}\b at t (a TLD after its dot): the end of the letters, or -1. */
static Py_ssize_t tld_end(const Scan *sc, Py_ssize_t t) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t r = email_run_end(sc, t, C_UPPER | C_LOWER);
    return r - t >= 2 && !EIS(r, C_WORD) ? r : -1;
}

static int label_ok(const Scan *sc, Py_ssize_t start, Py_ssize_t end) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    return end > start && EIS(start, C_ALNUM) && EIS(end - 1, C_ALNUM);
}

/* The domain pattern at p: label(\.label)*\.tld\b, a label [^\W_]([\w-]*[^\W_])?.
 * A label cannot hold a dot and is followed by one, so each is a whole segment between
 * dots. The regex takes as many labels as follow one another (the first must be one),
 * then gives them back one by one until a TLD follows: the match ends at the last
 * segment, among those up to one past the last label, that starts with a TLD. */
static Py_ssize_t email_domain(const Scan *sc, Py_ssize_t p) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t e = email_run_end(sc, p, C_WORD | C_DASH);
    if (!label_ok(sc, p, e)) {
        return -1;
    }
    Py_ssize_t found = -1;
    while (AT(e) == '.') {
        Py_ssize_t t = e + 1;
        Py_ssize_t tld = tld_end(sc, t);
        if (tld >= 0) {
            found = tld;
        }
        Py_ssize_t next = email_run_end(sc, t, C_WORD | C_DASH);
        if (!label_ok(sc, t, next)) {
            break;
        }
        e = next;
    }
    return found;
}

/* Each "@" with a local-part character before it and a letter or digit after: the local
 * part read backwards (64 characters at most), leading dots left out, and the domain. */
static int emails(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t at = -1;
    for (;;) {
        if (at + 1 < n && s[at + 1] == '@') { /* "@@@@": no call per "@" */
            at++;
        } else {
            const unsigned char *hit = memchr(s + at + 1, '@', (size_t)(n - at - 1));
            if (hit == NULL) {
                return 0;
            }
            at = (Py_ssize_t)(hit - s);
        }
        if (at == 0 || !EIS_IN(at - 1, C_LOCAL) || !EIS(at + 1, C_ALNUM)) {
            continue;
        }
        Py_ssize_t k = 0;
        while (k < 65 && at - 1 - k >= 0 && EIS_IN(at - 1 - k, C_LOCAL)) {
            k++;
        }
        if (k > 64) {
            continue;
        }
        Py_ssize_t end = email_domain(sc, at + 1);
        if (end < 0) {
            continue;
        }
        Py_ssize_t start = at - k;
        while (start < at && s[start] == '.') {
            start++;
        }
        if (start < at) {
            ADD(K_EMAIL, start, end);
        }
    }
}

/* --------------------------------------------------------------------------- digits */

/* The clusters (as _detect._Clusters has them): maximal runs of digits and " .-()+"
 * between other characters, from the first digit to the last. A card, an IPv4 address
 * or a phone number lies inside one (its characters are those), with 13, 4 and 7
 * digits at least; its look-arounds see the same characters from the cluster's edge. So
 * each scan tries the starts in the clusters with enough digits, not every character:
 * the same matches as a scan of the whole text. One branch-free pass (random digits and
 * letters would make a branch per character mispredict). */
static uint8_t CLUSTER_CLASS[256]; /* 1 a digit, 2 " .-()+", 0 anything else */

/* The first digit at or after i, or n: 16 characters a step where SSE2 is (prose has few
 * digits; the scans that need one skip to it). */
static inline Py_ssize_t next_digit_or_not(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, int want) {
#if defined(__SSE2__)
    const __m128i zero = _mm_set1_epi8('0');
    const __m128i bias = _mm_set1_epi8((char)0x80);
    const __m128i limit = _mm_set1_epi8((char)(0x80 + 10));
    while (i + 16 <= n) {
        /* (c - '0') < 10 unsigned: shifted by 0x80, a signed comparison */
        __m128i block = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i shifted = _mm_xor_si128(_mm_sub_epi8(block, zero), bias);
        int mask = _mm_movemask_epi8(_mm_cmplt_epi8(shifted, limit)) ^ (want ? 0 : 0xFFFF);
        if (mask) {
            return i + __builtin_ctz((unsigned)mask);
        }
        i += 16;
    }
#endif
    while (i < n && IS(s[i], C_DIGIT) != want) {
        i++;
    }
    return i;
}

static Py_ssize_t next_digit(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) {
    return next_digit_or_not(s, n, i, 1);
}

/* The first place at or after i where two capitals follow one another, or n - 1 or more. */
static Py_ssize_t next_capitals(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) {
#if defined(__SSE2__)
    const __m128i first = _mm_set1_epi8('A');
    const __m128i bias = _mm_set1_epi8((char)0x80);
    const __m128i limit = _mm_set1_epi8((char)(0x80 + 26));
    while (i + 17 <= n) {
        __m128i here = _mm_xor_si128(_mm_sub_epi8(_mm_loadu_si128((const __m128i *)(s + i)), first), bias);
        __m128i next = _mm_xor_si128(_mm_sub_epi8(_mm_loadu_si128((const __m128i *)(s + i + 1)), first), bias);
        int mask = _mm_movemask_epi8(_mm_and_si128(_mm_cmplt_epi8(here, limit), _mm_cmplt_epi8(next, limit)));
        if (mask) {
            return i + __builtin_ctz((unsigned)mask);
        }
        i += 16;
    }
#endif
    while (i + 1 < n && !(IS(s[i], C_UPPER) && IS(s[i + 1], C_UPPER))) {
        i++;
    }
    return i;
}

static int collect_clusters(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t cap = 0, count = 0;
    Py_ssize_t *found = NULL;
    Py_ssize_t i = 0;
    for (;;) {
        i = next_digit(s, n, i); /* a cluster's first digit */
        if (i >= n) {
            break;
        }
        Py_ssize_t first = i, last = i, digits = 0;
        for (;;) {
            unsigned c = i < n ? CLUSTER_CLASS[s[i]] : 0;
            if (c == 0) {
                break;
            }
            /* (masks, not ?: which the compiler turns back into branches) */
            Py_ssize_t is_digit = (Py_ssize_t)(c & 1);
            last = (last & ~-is_digit) | (i & -is_digit);
            digits += is_digit;
            i++;
        }
        if (digits >= 4) {
            if (count + 3 > cap) {
                cap = cap ? cap * 2 : 96;
                Py_ssize_t *grown = PyMem_Realloc(found, (size_t)cap * sizeof(Py_ssize_t));
                if (grown == NULL) {
                    PyMem_Free(found);
                    return -1;
                }
                found = grown;
            }
            found[count++] = first;
            found[count++] = last + 1;
            found[count++] = digits;
        }
    }
    sc->clusters = found;
    sc->cluster_count = count / 3;
    return 0;
}

static int luhn_ok(const unsigned char *s, Py_ssize_t start, Py_ssize_t end) {
    unsigned char digits[32];
    int count = 0;
    for (Py_ssize_t i = start; i < end && count < 32; i++) {
        if (IS(s[i], C_DIGIT)) {
            digits[count++] = (unsigned char)(s[i] - '0');
        }
    }
    if (count < 13 || count > 19) {
        return 0;
    }
    int same = 1, sum = 0;
    for (int i = 0; i < count; i++) {
        same &= digits[i] == digits[0];
        int d = digits[count - 1 - i];
        if (i % 2) {
            d = d * 2 > 9 ? d * 2 - 9 : d * 2;
        }
        sum += d;
    }
    return !same && sum % 10 == 0;
}

/* (?<![\d-])\d(?:[ -]?+\d){12,18}(?!\d): the iterations are taken greedily (each one way),
 * then given back until no digit follows. */
static int cards_in(Scan *sc, Py_ssize_t i, Py_ssize_t stop) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    while (i < stop) {
        if (!IS(s[i], C_DIGIT) || (i > 0 && (IS(s[i - 1], C_DIGIT) || s[i - 1] == '-'))) {
            i++;
            continue;
        }
        Py_ssize_t ends[19];
        int c = 0;
        Py_ssize_t p = i + 1;
        ends[0] = p;
        while (c < 18) {
            Py_ssize_t q = p + (AT(p) == ' ' || AT(p) == '-');
            if (!IS(AT(q), C_DIGIT)) {
                break;
            }
            p = q + 1;
            ends[++c] = p;
        }
        Py_ssize_t end = -1;
        for (int k = c; k >= 12; k--) {
            if (!IS(AT(ends[k]), C_DIGIT)) {
                end = ends[k];
                break;
            }
        }
        if (end < 0) {
            /* fewer than 13 digits before the chain breaks: so for every start in it (the
             * same chain, shorter) */
            i = c < 12 ? ends[c] : i + 1;
            continue;
        }
        if (luhn_ok(s, i, end)) {
            ADD(K_CARD, i, end);
        }
        i = end;
    }
    return 0;
}

static int iban_ok(const unsigned char *s, Py_ssize_t start, Py_ssize_t end) {
    unsigned char compact[64];
    int size = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        if (s[i] != ' ') {
            if (size == 64) {
                return 0;
            }
            compact[size++] = s[i];
        }
    }
    if (size < 15 || size > 34) {
        return 0;
    }
    unsigned remainder = 0;
    for (int k = 0; k < size; k++) {
        unsigned char c = compact[(k + 4) % size];
        if (IS(c, C_DIGIT)) {
            remainder = (remainder * 10 + (unsigned)(c - '0')) % 97;
        } else {
            remainder = (remainder * 100 + (unsigned)(c - 'A' + 10)) % 97;
        }
    }
    return remainder == 1;
}

#define IBAN_CHAR(c) IS((c), C_UPPER | C_DIGIT)

/* [A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b at i: the groups taken greedily,
 * then per count (most first) the tail and \b, or no tail and \b. The end, or -1. */
static Py_ssize_t iban_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) {
    Py_ssize_t ends[8];
    int c = 0;
    Py_ssize_t p = i + 4;
    ends[0] = p;
    while (c < 7) {
        Py_ssize_t t = p + (AT(p) == ' ');
        if (!(IBAN_CHAR(AT(t)) && IBAN_CHAR(AT(t + 1)) && IBAN_CHAR(AT(t + 2)) && IBAN_CHAR(AT(t + 3)))) {
            break;
        }
        p = t + 4;
        ends[++c] = p;
    }
    for (int k = c; k >= 2; k--) {
        Py_ssize_t pk = ends[k];
        Py_ssize_t t = pk + (AT(pk) == ' ');
        int r = 0;
        while (r < 4 && IBAN_CHAR(AT(t + r))) {
            r++;
        }
        if (r >= 1 && r <= 3 && !IS(AT(t + r), C_WORD)) {
            return t + r;
        }
        if (!IS(AT(pk), C_WORD)) {
            return pk;
        }
    }
    return -1;
}

static int ibans(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    /* the starts by two capitals in a row (rare but in capitals) */
    for (Py_ssize_t i = next_capitals(s, n, 0); i + 3 < n; i = next_capitals(s, n, i + 1)) {
        if (!(IS(s[i + 2], C_DIGIT) && IS(s[i + 3], C_DIGIT))) {
            continue;
        }
        if (i > 0 && IS(s[i - 1], C_WORD)) {
            continue;
        }
        Py_ssize_t end = iban_end(s, n, i);
        if (end >= 0 && iban_ok(s, i, end)) {
            ADD(K_IBAN, i, end);
        }
    }
    return 0;
}

/* An octet as the whole digit run at p (any shorter reading leaves a digit where a dot or
 * the end must be): 0-9, 10-99, 100-255. The run's length, or -1. */
static Py_ssize_t octet(const unsigned char *s, Py_ssize_t n, Py_ssize_t p) {
    Py_ssize_t d = 0;
    while (d < 4 && IS(AT(p + d), C_DIGIT)) {
        d++;
    }
    if (d == 1 || (d == 2 && s[p] != '0')) {
        return d;
    }
    if (d == 3 && (s[p] == '1' || (s[p] == '2' && (s[p + 1] < '5' || (s[p + 1] == '5' && s[p + 2] <= '5'))))) {
        return 3;
    }
    return -1;
}

/* (?<![\d.])OCTET(?:\.OCTET){3}(?!\.?\d) */
static int ipv4s_in(Scan *sc, Py_ssize_t lo, Py_ssize_t stop) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    /* A match's start is that of the digit run before its first dot: the starts are
     * tried dot by dot (memchr), in order, none before the end of the last match. */
    Py_ssize_t resume = lo;
    for (Py_ssize_t dot = lo; dot < stop; dot++) {
        const unsigned char *hit = memchr(s + dot, '.', (size_t)(stop - dot));
        if (hit == NULL) {
            break;
        }
        dot = (Py_ssize_t)(hit - s);
        Py_ssize_t i = dot;
        while (i > lo && i > dot - 4 && IS(s[i - 1], C_DIGIT)) {
            i--;
        }
        if (i == dot || i < resume || (i > 0 && (IS(s[i - 1], C_DIGIT) || s[i - 1] == '.'))) {
            continue;
        }
        Py_ssize_t p = i;
        int ok = 1;
        for (int g = 0; g < 4 && ok; g++) {
            if (g > 0) {
                if (AT(p) != '.') {
                    ok = 0;
                    break;
                }
                p++;
            }
            Py_ssize_t d = octet(s, n, p);
            if (d < 0) {
                ok = 0;
            } else {
                p += d;
            }
        }
        if (ok && !(AT(p) == '.' && IS(AT(p + 1), C_DIGIT))) {
            ADD(K_IP, i, p);
            resume = p;
        }
    }
    return 0;
}

/* (?<![:\w])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![:\w]): each group reads one way,
 * so a match is a whole run of [:\w] made of 3 to 8 hex groups of 4 at most. Then
 * _ipv6_ok: one of the forms of RFC 4291 (8 groups, or one "::" with 7 groups at most
 * around it), not colons alone. */
static uint8_t IPV6_RUN[256]; /* [:\w]: 1 a hex digit, 2 a colon, 4 another word character */

static int ipv6s(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    Py_ssize_t i = 0, dense_until = 0;
    while (i < n) {
        if (i >= dense_until) {
            /* A run holds a colon: a colon far ahead (memchr) skips to its run; near,
             * colons are dense: runs one after the other for a while (no call each). */
            const unsigned char *colon_at = memchr(s + i, ':', (size_t)(n - i));
            if (colon_at == NULL) {
                break;
            }
            Py_ssize_t colon_index = (Py_ssize_t)(colon_at - s);
            if (colon_index - i > 64) {
                Py_ssize_t back = colon_index;
                while (back > i && IPV6_RUN[s[back - 1]]) {
                    back--;
                }
                i = back;
            } else {
                dense_until = i + 4096;
            }
        }
        if (!IPV6_RUN[s[i]]) {
            i++;
            continue;
        }
        /* The run's end, and whether it holds only hex digits besides its colons. */
        Py_ssize_t stop = i;
        unsigned seen = 0;
        while (stop < n && IPV6_RUN[s[stop]]) {
            seen |= IPV6_RUN[s[stop]];
            stop++;
        }
        if (seen != 3 && seen != 2) {
            i = stop;
            continue;
        }
        /* Then one pass free of branches per character (colons and hex digits alternate
         * at random in hex-heavy text): colons, "::" (and where the one is), the longest
         * group. */
        Py_ssize_t j = i, gap = -1, colons = 0, colons_to_gap = 0, doubles = 0, group = 0, longest = 0;
        int other = 0, last_colon = 0;
        while (j < stop) {
            unsigned char c = s[j];
            int colon = c == ':';
            Py_ssize_t twice = -(Py_ssize_t)(colon & last_colon);
            other |= !colon & !IS(c, C_HEX);
            colons += colon;
            doubles -= twice;
            gap = (gap & ~twice) | ((j - 1) & twice);
            colons_to_gap = (colons_to_gap & ~twice) | (colons & twice);
            group = (group + 1) & -(Py_ssize_t)!colon;
            longest = group > longest ? group : longest;
            last_colon = colon;
            j++;
        }
        if (!other && colons >= 2 && colons <= 7 && longest <= 4) {
            int ok;
            if (doubles == 0) { /* eight groups */
                ok = colons == 7 && s[i] != ':' && s[j - 1] != ':';
            } else if (doubles == 1) { /* L::R, each side empty or groups between single colons */
                Py_ssize_t left = gap > i ? colons_to_gap - 1 : 0;
                Py_ssize_t right = gap + 2 < j ? colons - colons_to_gap + 1 : 0;
                ok = !(gap > i && s[i] == ':') && !(gap + 2 < j && s[j - 1] == ':') && left + right > 0 &&
                     left + right <= 7;
            } else {
                ok = 0;
            }
            if (ok) {
                ADD(K_IP, i, j);
            }
        }
        i = j;
    }
    return 0;
}

static int is_phone_separator(unsigned char c) { return c == ' ' || c == '.' || c == '-'; }

/* The digit run from p: its end (a cache: phone candidates read the same runs again). */
static Py_ssize_t digits_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t p, RunCache *cache) {
    return run_end(s, n, p, C_DIGIT, cache);
}

/* _PHONE_LINEAR at i, tried in the regex's order: the "+" part (3, 2, 1 digits; a
 * separator taken, then not), the "(...)" part likewise, each then left out; the digit
 * run (possessive); up to 5 more groups, given back one by one until the look-ahead
 * holds. The end of the first reading that holds, or -1. */
static Py_ssize_t phone_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, RunCache *cache) {
    Py_ssize_t after_plus[8];
    int plus_count = 0;
    if (s[i] == '+') {
        Py_ssize_t d = digits_end(s, n, i + 1, cache) - (i + 1);
        for (Py_ssize_t k = d < 3 ? d : 3; k >= 1; k--) {
            Py_ssize_t p = i + 1 + k;
            if (is_phone_separator(AT(p))) {
                after_plus[plus_count++] = p + 1;
            }
            after_plus[plus_count++] = p;
        }
    }
    after_plus[plus_count++] = i;
    for (int a = 0; a < plus_count; a++) {
        Py_ssize_t p = after_plus[a];
        Py_ssize_t after_paren[3];
        int paren_count = 0;
        if (AT(p) == '(') {
            Py_ssize_t e = digits_end(s, n, p + 1, cache) - (p + 1);
            if (e >= 1 && e <= 4 && AT(p + 1 + e) == ')') {
                Py_ssize_t q = p + 2 + e;
                if (is_phone_separator(AT(q))) {
                    after_paren[paren_count++] = q + 1;
                }
                after_paren[paren_count++] = q;
            }
        }
        after_paren[paren_count++] = p;
        for (int b = 0; b < paren_count; b++) {
            Py_ssize_t q = after_paren[b];
            if (!IS(AT(q), C_DIGIT)) {
                continue;
            }
            Py_ssize_t ends[6];
            int c = 0;
            ends[0] = digits_end(s, n, q, cache);
            while (c < 5) {
                Py_ssize_t m = ends[c];
                if (!(is_phone_separator(AT(m)) && IS(AT(m + 1), C_DIGIT) && IS(AT(m + 2), C_DIGIT))) {
                    break;
                }
                ends[c + 1] = digits_end(s, n, m + 1, cache);
                c++;
            }
            for (int k = c; k >= 0; k--) {
                Py_ssize_t m = ends[k];
                unsigned char next = AT(m);
                if (!(IS(next, C_WORD) || next == '-' || (next == '.' && IS(AT(m + 1), C_DIGIT)))) {
                    return m;
                }
            }
        }
    }
    return -1;
}

/* _phone_ok: 7 to 15 digits; "+" or "(" accepts; a date, a bare number, a decimal or
 * thousands grouping rejects. */
static int phone_ok(const unsigned char *v, Py_ssize_t size) {
    int digits = 0, spaces = 0, dots = 0, dashes = 0, paren = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = v[i];
        if (c == ' ') {
            spaces++;
        } else if (c == '.') {
            dots++;
        } else if (c == '-') {
            dashes++;
        } else if (c == '(') {
            paren = 1;
        } else if (c != ')' && c != '+') {
            digits++;
        }
    }
    if (digits < 7 || digits > 15) {
        return 0;
    }
    if (v[0] == '+' || paren) {
        return 1;
    }
    /* _DATE.fullmatch: three digit runs between two of [-./] */
    {
        Py_ssize_t runs[3];
        Py_ssize_t p = 0;
        int k = 0, date = 1;
        for (; k < 3; k++) {
            Py_ssize_t q = p;
            while (q < size && v[q] >= '0' && v[q] <= '9') {
                q++;
            }
            runs[k] = q - p;
            if (k < 2) {
                if (q >= size || !(v[q] == '-' || v[q] == '.' || v[q] == '/')) {
                    date = 0;
                    break;
                }
                p = q + 1;
            } else if (q != size) {
                date = 0;
            }
        }
        if (date) {
            int first = runs[0] == 4 && runs[1] >= 1 && runs[1] <= 2 && runs[2] >= 1 && runs[2] <= 2;
            int second = runs[0] >= 1 && runs[0] <= 2 && runs[1] >= 1 && runs[1] <= 2 && runs[2] >= 2 && runs[2] <= 4;
            if (first || second) {
                return 0;
            }
        }
    }
    if (!(spaces + dots + dashes)) {
        return 0;
    }
    if (dots == 1 && !spaces && !dashes) {
        return 0;
    }
    /* thousands grouping: the first group 3 long at most, every other one 3 long */
    Py_ssize_t start = 0;
    int first = 1;
    for (Py_ssize_t i = 0; i <= size; i++) {
        if (i == size || is_phone_separator(v[i])) {
            Py_ssize_t length = i - start;
            if (first ? length > 3 : length != 3) {
                return 1;
            }
            first = 0;
            start = i + 1;
        }
    }
    return 0;
}

/* (?<![\w+.-]) ... */
static int phones_in(Scan *sc, Py_ssize_t i, Py_ssize_t stop, RunCache *cache_) {
    const unsigned char *s = sc->s;
    Py_ssize_t n = sc->n;
    RunCache *cache = cache_;
    while (i < stop) {
        unsigned char c = s[i];
        if (!(IS(c, C_DIGIT) || c == '+' || c == '(')) {
            i++;
            continue;
        }
        if (i > 0) {
            unsigned char b = s[i - 1];
            if (IS(b, C_WORD) || b == '+' || b == '.' || b == '-') {
                i++;
                continue;
            }
        }
        Py_ssize_t end = phone_end(s, n, i, cache);
        if (end < 0) {
            i++;
            continue;
        }
        if (phone_ok(s + i, end - i)) {
            ADD(K_PHONE, i, end);
        }
        i = end;
    }
    return 0;
}

/* Each scan over the clusters with enough digits for it (a phone may start one before). */
static int cards(Scan *sc) {
    for (Py_ssize_t k = 0; k < sc->cluster_count; k++) {
        Py_ssize_t *cluster = sc->clusters + 3 * k;
        if (cluster[2] >= 13 && cards_in(sc, cluster[0], cluster[1]) < 0) {
            return -1;
        }
    }
    return 0;
}

static int ipv4s(Scan *sc) {
    for (Py_ssize_t k = 0; k < sc->cluster_count; k++) {
        Py_ssize_t *cluster = sc->clusters + 3 * k;
        if (ipv4s_in(sc, cluster[0], cluster[1]) < 0) {
            return -1;
        }
    }
    return 0;
}

static int phones(Scan *sc) {
    RunCache cache = {-1, -2};
    for (Py_ssize_t k = 0; k < sc->cluster_count; k++) {
        Py_ssize_t *cluster = sc->clusters + 3 * k;
        if (cluster[2] >= 7 && phones_in(sc, cluster[0] > 0 ? cluster[0] - 1 : 0, cluster[1], &cache) < 0) {
            return -1;
        }
    }
    return 0;
}

/* --------------------------------------------------------------------------- the module */

static PyObject *finding_type = NULL;
static PyObject *kind_names[K_COUNT];

static int by_start(const void *a, const void *b) {
    Py_ssize_t x = ((const Hit *)a)->start, y = ((const Hit *)b)->start;
    return (x > y) - (x < y);
}

static PyObject *new_finding(int kind, Py_ssize_t start, Py_ssize_t end, PyObject *value) {
    PyObject *low = PyLong_FromSsize_t(start);
    PyObject *high = low ? PyLong_FromSsize_t(end) : NULL;
    if (high == NULL) {
        Py_XDECREF(low);
        Py_DECREF(value);
        return NULL;
    }
    PyObject *kind_name = Py_NewRef(kind_names[kind]);
#if PY_VERSION_HEX < 0x030E0000
    /* as tuple.__new__(Finding, ...) does (tuple_subtype_new): allocate, fill */
    PyObject *finding = ((PyTypeObject *)finding_type)->tp_alloc((PyTypeObject *)finding_type, 4);
    if (finding == NULL) {
        Py_DECREF(kind_name);
        Py_DECREF(low);
        Py_DECREF(high);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(finding, 0, kind_name);
    PyTuple_SET_ITEM(finding, 1, low);
    PyTuple_SET_ITEM(finding, 2, high);
    PyTuple_SET_ITEM(finding, 3, value);
    /* Strings and ints only: it can be in no cycle, so the collector need not follow it (it
     * untracks such tuples itself, once it has visited them: tens of thousands here). */
    PyObject_GC_UnTrack(finding);
    return finding;
#else
    PyObject *items = PyTuple_Pack(4, kind_name, low, high, value);
    Py_DECREF(kind_name);
    Py_DECREF(low);
    Py_DECREF(high);
    Py_DECREF(value);
    if (items == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, items);
    Py_DECREF(items);
    if (args == NULL) {
        return NULL;
    }
    PyObject *finding = PyTuple_Type.tp_new((PyTypeObject *)finding_type, args, NULL);
    Py_DECREF(args);
    return finding;
#endif
}

PyDoc_STRVAR(configure_doc, "configure(finding_type, kinds)\n--\n\n"
                            "The named tuple type of a finding and the kind names, in precedence order.");

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *type, *kinds;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!:configure", &PyType_Type, &type, &PyTuple_Type, &kinds)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) || PyTuple_GET_SIZE(kinds) != K_COUNT) {
        PyErr_SetString(PyExc_ValueError, "configure needs a tuple type and the six kinds");
        return NULL;
    }
    for (int k = 0; k < K_COUNT; k++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kinds, k))) {
            PyErr_SetString(PyExc_TypeError, "kinds must be strings");
            return NULL;
        }
    }
    Py_XSETREF(finding_type, Py_NewRef(type));
    for (int k = 0; k < K_COUNT; k++) {
        Py_XSETREF(kind_names[k], Py_NewRef(PyTuple_GET_ITEM(kinds, k)));
    }
    Py_RETURN_NONE;
}

/* The plain copy of a non-ASCII text from low (as find_python's plain: each non-ASCII
 * character "?", so that a character is a byte and offsets are code point indices); the
 * e-mail scan reads the original where the copy has "?". -1 on no memory. */
static int plain_copy(Scan *sc, PyObject *text, Py_ssize_t low) {
    Py_ssize_t n = sc->n;
    int kind = PyUnicode_KIND(text);
    const void *data = (const char *)PyUnicode_DATA(text) + low * kind;
    unsigned char *plain = PyMem_Malloc((size_t)n);
    if (plain == NULL) {
        return -1;
    }
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *u = data;
        for (Py_ssize_t i = 0; i < n; i++) {
            plain[i] = u[i] < 128 ? u[i] : '?';
        }
    } else if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *u = data;
        for (Py_ssize_t i = 0; i < n; i++) {
            plain[i] = u[i] < 128 ? (unsigned char)u[i] : '?';
        }
    } else {
        const Py_UCS4 *u = data;
        for (Py_ssize_t i = 0; i < n; i++) {
            plain[i] = u[i] < 128 ? (unsigned char)u[i] : '?';
        }
    }
    sc->plain = plain;
    sc->s = plain;
    sc->ukind = kind;
    sc->udata = data;
    return 0;
}

/* Scans text[low:high] (0 <= low <= high <= its length) for kinds: sc->hits in order,
 * their bounds in the stretch. -1 with an exception set. */
static int scan(Scan *sc, PyObject *text, Py_ssize_t low, Py_ssize_t high, unsigned int kinds) {
    if (finding_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return -1;
    }
    sc->n = high - low;
    if (sc->n == 0 || kinds == 0) {
        return 0;
    }
    if (PyUnicode_IS_ASCII(text)) {
        sc->s = (const unsigned char *)PyUnicode_DATA(text) + low;
    } else if (plain_copy(sc, text, low) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    sc->taken = PyMem_Calloc((size_t)sc->n, 1);
    if (sc->taken == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int failed = 0;
    if (kinds & (1u << K_SECRET)) {
        failed = collect_anchors(sc) || private_keys(sc) || tokens(sc) || bearers(sc) || assignments(sc);
    }
    if (!failed && (kinds & (1u << K_EMAIL))) {
        failed = emails(sc);
    }
    if (!failed && (kinds & ((1u << K_CARD) | (1u << K_IP) | (1u << K_PHONE)))) {
        failed = collect_clusters(sc);
    }
    if (!failed && (kinds & (1u << K_CARD))) {
        failed = cards(sc);
    }
    if (!failed && (kinds & (1u << K_IBAN))) {
        failed = ibans(sc);
    }
    if (!failed && (kinds & (1u << K_IP))) {
        failed = ipv4s(sc) || ipv6s(sc);
    }
    if (!failed && (kinds & (1u << K_PHONE))) {
        failed = phones(sc);
    }
    if (failed) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 1; k < sc->count; k++) {
        if (sc->hits[k].start < sc->hits[k - 1].start) {
            qsort(sc->hits, (size_t)sc->count, sizeof(Hit), by_start);
            break;
        }
    }
    return 0;
}

static void scan_free(Scan *sc) {
    PyMem_Free(sc->plain);
    PyMem_Free(sc->taken);
    PyMem_Free(sc->anchors);
    PyMem_Free(sc->clusters);
    PyMem_Free(sc->hits);
}

/* The findings of hits[low:high] as a list, their values at base in text and their bounds
 * shifted by offset. */
static PyObject *findings(PyObject *text, Py_ssize_t base, const Hit *hits, Py_ssize_t low, Py_ssize_t high,
                          Py_ssize_t offset) {
    PyObject *result = PyList_New(high - low);
    if (result == NULL) {
        return NULL;
    }
    /* Out of the GC's lists until filled: a finding's allocation can start a collection,
     * whose callbacks (gc.callbacks) and finalizers run Python code, and gc.get_objects()
     * there would hand over this list, whose NULL items crash the interpreter when read. */
    PyObject_GC_UnTrack(result);
    for (Py_ssize_t k = low; k < high; k++) {
        const Hit *hit = &hits[k];
        PyObject *value = PyUnicode_Substring(text, base + hit->start, base + hit->end);
        PyObject *finding = value ? new_finding(hit->kind, hit->start + offset, hit->end + offset, value) : NULL;
        if (finding == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, k - low, finding);
    }
    PyObject_GC_Track(result);
    return result;
}

PyDoc_STRVAR(find_doc, "find(text, kinds, offset)\n--\n\n"
                       "Detector.find of a text: kinds is a mask (bit i: KINDS[i]); offset is\n"
                       "added to the bounds. The findings in order, as named tuples.");

static PyObject *find(PyObject *module, PyObject *args) {
    PyObject *text;
    unsigned int kinds;
    Py_ssize_t offset;
    (void)module;
    if (!PyArg_ParseTuple(args, "UIn:find", &text, &kinds, &offset)) {
        return NULL;
    }
    if (offset > 0 && PyUnicode_GET_LENGTH(text) > PY_SSIZE_T_MAX - offset) { /* end + offset would overflow */
        PyErr_SetString(PyExc_OverflowError, "offset too large for the native scan");
        return NULL;
    }
    Scan sc = {0};
    PyObject *result =
        scan(&sc, text, 0, PyUnicode_GET_LENGTH(text), kinds) < 0 ? NULL : findings(text, 0, sc.hits, 0, sc.count, offset);
    scan_free(&sc);
    return result;
}

PyDoc_STRVAR(find_split_doc, "find_split(text, kinds, sizes)\n--\n\n"
                             "The findings of texts of these sizes joined by one character each, per\n"
                             "text, their bounds in that text; None when one reaches\n"
                             "past the end of its text.");

static PyObject *find_split(PyObject *module, PyObject *args) {
    PyObject *text, *sizes;
    unsigned int kinds;
    (void)module;
    if (!PyArg_ParseTuple(args, "UIO!:find_split", &text, &kinds, &PyList_Type, &sizes)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(sizes);
    Scan sc = {0};
    PyObject *result = NULL;
    if (scan(&sc, text, 0, PyUnicode_GET_LENGTH(text), kinds) < 0) {
        goto done;
    }
    result = PyList_New(count);
    if (result == NULL) {
        goto done;
    }
    PyObject_GC_UnTrack(result); /* until filled, as findings' list */
    Py_ssize_t offset = 0, k = 0;
    for (Py_ssize_t index = 0; index < count; index++) {
        Py_ssize_t size = PyLong_AsSsize_t(PyList_GET_ITEM(sizes, index));
        if (size < 0 || size > sc.n - offset) { /* (offset + size would overflow) */
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "sizes must add up to the text (one character between)");
            }
            Py_CLEAR(result);
            goto done;
        }
        Py_ssize_t bound = offset + size, low = k; /* this text: [offset, bound] */
        while (k < sc.count && sc.hits[k].start <= bound) {
            if (sc.hits[k].end > bound) { /* across a separator: the caller scans text by text */
                Py_CLEAR(result);
                result = Py_NewRef(Py_None);
                goto done;
            }
            k++;
        }
        PyObject *found = findings(text, 0, sc.hits, low, k, -offset);
        if (found == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, index, found);
        offset = bound + 1;
    }
    if (count > 0 && offset != sc.n + 1) { /* the findings after the last size would be lost */
        PyErr_SetString(PyExc_ValueError, "sizes must add up to the text (one character between)");
        Py_CLEAR(result);
    }
    if (result != NULL) {
        PyObject_GC_Track(result);
    }
done:
    scan_free(&sc);
    return result;
}

/* --------------------------------------------------------------------------- masking
 *
 * pii_redactor's work after the scan, for tens of thousands of findings: each value's
 * identity and placeholder (_Masker._of_kind in pii_redactor.py, the reference and the
 * fallback), and the text with its findings replaced (_detect._interleaved). */

static PyObject *casefold_method = NULL; /* str.casefold: an identity computed here */
static PyObject *str_method = NULL;      /* str.__str__: the value itself */
static PyObject *casefold_name = NULL;   /* "casefold" */

#if PY_VERSION_HEX < 0x030D0000
/* Whether str.casefold maps a BMP character to itself: 0 not asked yet, 1 yes, 2 no. */
static uint8_t FOLDS_TO_ITSELF[65536];
#endif

/* Whether str.casefold leaves a non-ASCII ch as it is (str.casefold folds character by
 * character, with _PyUnicode_ToFoldedFull; no context). 0 where that cannot be told here. */
static int wide_folds_to_itself(Py_UCS4 ch) {
#if PY_VERSION_HEX < 0x030D0000
    if (ch < 65536 && FOLDS_TO_ITSELF[ch]) {
        return FOLDS_TO_ITSELF[ch] == 1;
    }
    Py_UCS4 mapped[3];
    int same = _PyUnicode_ToFoldedFull(ch, mapped) == 1 && mapped[0] == ch;
    if (ch < 65536) {
        FOLDS_TO_ITSELF[ch] = same ? 1 : 2;
    }
    return same;
#else
    (void)ch;
    return 0;
#endif
}

#define FOLDS_TO_ITSELF_(ch) ((ch) < 128 ? (Py_UCS4)((ch) - 'A') >= 26u : wide_folds_to_itself(ch))

/* Whether value.casefold() == value. */
static int folded_already(PyObject *value) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    const void *data = PyUnicode_DATA(value);
    switch (PyUnicode_KIND(value)) {
    case PyUnicode_1BYTE_KIND:
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 ch = ((const Py_UCS1 *)data)[i];
            if (!FOLDS_TO_ITSELF_(ch)) {
                return 0;
            }
        }
        return 1;
    case PyUnicode_2BYTE_KIND:
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 ch = ((const Py_UCS2 *)data)[i];
#if PY_VERSION_HEX < 0x030D0000
            if (ch >= 128 && FOLDS_TO_ITSELF[ch] == 1) {
                continue;
            }
#endif
            if (!FOLDS_TO_ITSELF_(ch)) {
                return 0;
            }
        }
        return 1;
    default:
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 ch = ((const Py_UCS4 *)data)[i];
            if (!FOLDS_TO_ITSELF_(ch)) {
                return 0;
            }
        }
        return 1;
    }
}

/* value.casefold() (a new reference): value itself when folding changes nothing (an
 * equal string), else str.casefold's own answer. */
static PyObject *casefolded(PyObject *value) {
    return folded_already(value) ? Py_NewRef(value) : PyObject_CallMethodNoArgs(value, casefold_name);
}

/* identity(value), a new reference; str.casefold and str.__str__ of a str without a call. */
static PyObject *identity_of(PyObject *identity, PyObject *value) {
    if (PyUnicode_CheckExact(value)) {
        if (identity == casefold_method) {
            return casefolded(value);
        }
        if (identity == str_method) {
            return Py_NewRef(value);
        }
    }
    return PyObject_CallOneArg(identity, value);
}

PyDoc_STRVAR(assign_doc, "assign(values, identity, known, mapping, supply)\n--\n\n"
                         "The placeholder of each of values (all of one kind), as _Masker._of_kind\n"
                         "gives them, and how many of supply it took: known maps identity(value)\n"
                         "to its placeholder; each new identity, in order, takes the next of\n"
                         "supply; mapping takes each placeholder's first value.");

static PyObject *assign(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5 || !PyList_Check(args[0]) || !PyDict_Check(args[2]) || !PyDict_Check(args[3]) ||
        !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "assign(values: list, identity, known: dict, mapping: dict, supply: list)");
        return NULL;
    }
    PyObject *identity = args[1], *known = args[2], *mapping = args[3], *supply = args[4];
    /* A copy: identity may run Python code, which could change the list. */
    PyObject *values = PyList_GetSlice(args[0], 0, PyList_GET_SIZE(args[0]));
    if (values == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(values), used = 0;
    PyObject *names = PyList_New(count); /* NULL items until named */
    if (names == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    /* Out of the GC's lists until filled: identity may run Python code, and gc.get_objects()
     * there would hand it a list whose NULL items crash the interpreter when read. */
    PyObject_GC_UnTrack(names);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        PyObject *id = identity_of(identity, value);
        if (id == NULL) {
            goto failed;
        }
        if (used >= PyList_GET_SIZE(supply)) { /* (identity's code may have changed supply) */
            Py_DECREF(id);
            PyErr_SetString(PyExc_ValueError, "supply must hold a placeholder per value");
            goto failed;
        }
        PyObject *next = Py_NewRef(PyList_GET_ITEM(supply, used));
        Py_ssize_t before = PyDict_GET_SIZE(known);
        PyObject *name = PyDict_SetDefault(known, id, next);
        Py_XINCREF(name); /* (borrowed from known: held before anything is let go) */
        if (name != NULL && PyDict_GET_SIZE(known) != before) {
            used++; /* a new identity: it took next */
        }
        Py_DECREF(id);
        Py_DECREF(next);
        if (name == NULL) {
            goto failed;
        }
        PyList_SET_ITEM(names, i, name);
        if (PyDict_SetDefault(mapping, name, value) == NULL) {
            goto failed;
        }
    }
    Py_DECREF(values);
    PyObject_GC_Track(names);
    return Py_BuildValue("(Nn)", names, used);
failed:
    Py_DECREF(names);
    Py_DECREF(values);
    return NULL;
}

/* How wide a character of text[start:end] can be: 0 ASCII, 1 Latin-1, 2 UCS-2, 3 UCS-4
 * (the least width of a string holding it, as CPython makes every string). */
static int width_of(int kind, const void *data, Py_ssize_t start, Py_ssize_t end, int at_least) {
    int most = kind == PyUnicode_1BYTE_KIND ? 1 : kind == PyUnicode_2BYTE_KIND ? 2 : 3;
    for (Py_ssize_t i = start; i < end && at_least < most; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        int width = ch < 128 ? 0 : ch < 256 ? 1 : ch < 65536 ? 2 : 3;
        if (width > at_least) {
            at_least = width;
        }
    }
    return at_least;
}

static int width_of_str(PyObject *text) {
    if (PyUnicode_IS_ASCII(text)) {
        return 0;
    }
    int kind = PyUnicode_KIND(text);
    return kind == PyUnicode_1BYTE_KIND ? 1 : kind == PyUnicode_2BYTE_KIND ? 2 : 3;
}

/* Copies source[start:end] to target at at. */
static void copy_chars(PyObject *target, Py_ssize_t at, PyObject *source, Py_ssize_t start, Py_ssize_t end) {
    int to = PyUnicode_KIND(target), from = PyUnicode_KIND(source);
    char *to_data = PyUnicode_DATA(target);
    const char *from_data = PyUnicode_DATA(source);
    if (to == from) {
        memcpy(to_data + at * to, from_data + start * from, (size_t)((end - start) * from));
        return;
    }
    for (Py_ssize_t i = start; i < end; i++) {
        PyUnicode_WRITE(to, to_data, at++, PyUnicode_READ(from, from_data, i));
    }
}

/* A finding's start and end (items 1 and 2 of a tuple); -1 with an exception set. */
static int finding_bounds(PyObject *finding, Py_ssize_t *start, Py_ssize_t *end) {
    if (!PyTuple_Check(finding) || PyTuple_GET_SIZE(finding) < 3) {
        PyErr_SetString(PyExc_TypeError, "findings must be (kind, start, end, ...) tuples");
        return -1;
    }
    *start = PyLong_AsSsize_t(PyTuple_GET_ITEM(finding, 1));
    *end = *start == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(PyTuple_GET_ITEM(finding, 2));
    return *end == -1 && PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(interleave_doc, "interleave(text, findings, replacements, begin, end)\n--\n\n"
                             "text[begin:end] with each of findings (in order, within it) replaced\n"
                             "by the replacement at its index.");

static PyObject *interleave(PyObject *module, PyObject *args) {
    PyObject *text, *findings, *replacements;
    Py_ssize_t begin, end;
    (void)module;
    if (!PyArg_ParseTuple(args, "UO!O!nn:interleave", &text, &PyList_Type, &findings, &PyList_Type, &replacements,
                          &begin, &end)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(findings);
    if (PyList_GET_SIZE(replacements) != count) {
        PyErr_SetString(PyExc_ValueError, "one replacement per finding");
        return NULL;
    }
    if (begin < 0 || begin > end || end > PyUnicode_GET_LENGTH(text)) {
        PyErr_SetString(PyExc_ValueError, "begin and end must bound a stretch of the text");
        return NULL;
    }
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    int ascii = PyUnicode_IS_ASCII(text);
    /* The size and width of the result; nothing below runs Python code, so the lists
     * stay as they are between the two passes. */
    Py_ssize_t size = 0, position = begin;
    int width = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t start, stop;
        if (finding_bounds(PyList_GET_ITEM(findings, k), &start, &stop) < 0) {
            return NULL;
        }
        if (start < position || stop < start || stop > end) {
            PyErr_SetString(PyExc_ValueError, "findings must be in order, apart, within begin and end");
            return NULL;
        }
        PyObject *replacement = PyList_GET_ITEM(replacements, k);
        if (!PyUnicode_Check(replacement)) {
            PyErr_SetString(PyExc_TypeError, "replacements must be strings");
            return NULL;
        }
        Py_ssize_t length = PyUnicode_GET_LENGTH(replacement);
        if (length > PY_SSIZE_T_MAX - (start - position) - size) { /* size stays below the text's before */
            PyErr_SetString(PyExc_OverflowError, "the replaced text is too long");
            return NULL;
        }
        size += (start - position) + length;
        if (!ascii) {
            width = width_of(kind, data, position, start, width);
        }
        int own = width_of_str(replacement);
        width = own > width ? own : width;
        position = stop;
    }
    if (end - position > PY_SSIZE_T_MAX - size) {
        PyErr_SetString(PyExc_OverflowError, "the replaced text is too long");
        return NULL;
    }
    size += end - position;
    if (!ascii) {
        width = width_of(kind, data, position, end, width);
    }
    static const Py_UCS4 widest[4] = {127, 255, 65535, 1114111};
    PyObject *result = PyUnicode_New(size, widest[width]);
    if (result == NULL) {
        return NULL;
    }
    Py_ssize_t at = 0;
    position = begin;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t start, stop;
        if (finding_bounds(PyList_GET_ITEM(findings, k), &start, &stop) < 0) { /* (checked above) */
            Py_DECREF(result);
            return NULL;
        }
        PyObject *replacement = PyList_GET_ITEM(replacements, k);
        copy_chars(result, at, text, position, start);
        at += start - position;
        copy_chars(result, at, replacement, 0, PyUnicode_GET_LENGTH(replacement));
        at += PyUnicode_GET_LENGTH(replacement);
        position = stop;
    }
    copy_chars(result, at, text, position, end);
    return result;
}

PyDoc_STRVAR(find_window_doc, "find_window(text, kinds, low, high, start, stop)\n--\n\n"
                              "The findings of text[low:high] (their bounds in text) that start in\n"
                              "[start, stop): find(text[low:high], kinds, low) cut, without the copies.");

static PyObject *find_window(PyObject *module, PyObject *args) {
    PyObject *text;
    unsigned int kinds;
    Py_ssize_t low, high, start, stop;
    (void)module;
    if (!PyArg_ParseTuple(args, "UInnnn:find_window", &text, &kinds, &low, &high, &start, &stop)) {
        return NULL;
    }
    if (low < 0 || low > high || high > PyUnicode_GET_LENGTH(text)) {
        PyErr_SetString(PyExc_ValueError, "low and high must bound a stretch of the text");
        return NULL;
    }
    Scan sc = {0};
    PyObject *result = NULL;
    if (scan(&sc, text, low, high, kinds) == 0) {
        /* hits are in order of start; their bounds + low <= high: no overflow */
        Py_ssize_t first = 0, last;
        while (first < sc.count && sc.hits[first].start + low < start) {
            first++;
        }
        last = first;
        while (last < sc.count && sc.hits[last].start + low < stop) {
            last++;
        }
        result = findings(text, low, sc.hits, first, last, low);
    }
    scan_free(&sc);
    return result;
}

/* words_in: which of a set of words occur in a text as whole ASCII words, a word being a
 * maximal run of [A-Za-z0-9_] (any other character, non-ASCII ones included, separates).
 * prompt_guard's _words without the split: no string is made per word of the text. */

#define WORDS_SLOTS 256 /* open addressing over the candidates: at most half full */

typedef struct {
    uint64_t hash;
    const char *chars; /* the candidate's ASCII characters */
    Py_ssize_t length;
    PyObject *word; /* borrowed from the list of the set's members */
    int found;
} WordSlot;

static uint64_t word_hash_step(uint64_t hash, Py_UCS4 c) { return (hash ^ (uint64_t)c) * 1099511628211ULL; }

PyDoc_STRVAR(words_in_doc, "words_in(text, words)\n--\n\n"
                           "The members of the frozenset words (at most 128, each ASCII) that occur\n"
                           "in text as a whole word: a maximal run of [A-Za-z0-9_].");

static PyObject *words_in(PyObject *module, PyObject *args) {
    PyObject *text, *words;
    (void)module;
    if (!PyArg_ParseTuple(args, "UO!:words_in", &text, &PyFrozenSet_Type, &words)) {
        return NULL;
    }
    if (PySet_GET_SIZE(words) > WORDS_SLOTS / 2) {
        PyErr_Format(PyExc_ValueError, "words_in: at most %d words, got %zd", WORDS_SLOTS / 2,
                     PySet_GET_SIZE(words));
        return NULL;
    }
    WordSlot slots[WORDS_SLOTS];
    memset(slots, 0, sizeof(slots));
    Py_ssize_t shortest = PY_SSIZE_T_MAX, longest = 0;
    PyObject *members = PySequence_List(words); /* holds the words while their slots point at them */
    if (members == NULL) {
        return NULL;
    }
    for (Py_ssize_t index = 0; index < PyList_GET_SIZE(members); index++) {
        PyObject *word = PyList_GET_ITEM(members, index);
        if (!PyUnicode_Check(word) || !PyUnicode_IS_ASCII(word)) {
            Py_DECREF(members);
            PyErr_SetString(PyExc_TypeError, "words_in: every word must be an ASCII str");
            return NULL;
        }
        const char *chars = (const char *)PyUnicode_1BYTE_DATA(word);
        Py_ssize_t length = PyUnicode_GET_LENGTH(word);
        uint64_t hash = 14695981039346656037ULL;
        int whole = length > 0;
        for (Py_ssize_t i = 0; i < length; i++) {
            whole = whole && (CLS[(unsigned char)chars[i]] & C_WORD);
            hash = word_hash_step(hash, (unsigned char)chars[i]);
        }
        if (!whole) { /* never a whole run of word characters: never found */
            continue;
        }
        size_t slot = (size_t)hash & (WORDS_SLOTS - 1);
        while (slots[slot].chars != NULL) {
            slot = (slot + 1) & (WORDS_SLOTS - 1);
        }
        slots[slot] = (WordSlot){hash, chars, length, word, 0};
        shortest = length < shortest ? length : shortest;
        longest = length > longest ? length : longest;
    }
    PyObject *found = PyList_New(0);
    if (found == NULL) {
        Py_DECREF(members);
        return NULL;
    }
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    Py_ssize_t start = 0;
    uint64_t hash = 14695981039346656037ULL;
    for (Py_ssize_t i = 0; i <= n; i++) {
        Py_UCS4 c = i < n ? PyUnicode_READ(kind, data, i) : 0;
        if (c < 128 && (CLS[c] & C_WORD)) {
            hash = word_hash_step(hash, c);
            continue;
        }
        Py_ssize_t length = i - start;
        if (length >= shortest && length <= longest) {
            size_t slot = (size_t)hash & (WORDS_SLOTS - 1);
            while (slots[slot].chars != NULL) {
                WordSlot *candidate = &slots[slot];
                if (candidate->hash == hash && candidate->length == length && !candidate->found) {
                    Py_ssize_t k = 0;
                    while (k < length && (Py_UCS4)(unsigned char)candidate->chars[k] ==
                                             PyUnicode_READ(kind, data, start + k)) {
                        k++;
                    }
                    if (k == length) {
                        candidate->found = 1;
                        if (PyList_Append(found, candidate->word) < 0) {
                            Py_DECREF(found);
                            Py_DECREF(members);
                            return NULL;
                        }
                        break;
                    }
                }
                slot = (slot + 1) & (WORDS_SLOTS - 1);
            }
        }
        start = i + 1;
        hash = 14695981039346656037ULL;
    }
    PyObject *result = PyFrozenSet_New(found);
    Py_DECREF(found);
    Py_DECREF(members);
    return result;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, configure_doc},
    {"find", find, METH_VARARGS, find_doc},
    {"find_split", find_split, METH_VARARGS, find_split_doc},
    {"find_window", find_window, METH_VARARGS, find_window_doc},
    {"assign", (PyCFunction)(void (*)(void))assign, METH_FASTCALL, assign_doc},
    {"interleave", interleave, METH_VARARGS, interleave_doc},
    {"words_in", words_in, METH_VARARGS, words_in_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_scan", "The native scan of ringd.plugins._detect ", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void) {
    for (int c = 0; c < 256; c++) {
        uint8_t bits = 0;
        if (c >= '0' && c <= '9') {
            bits |= C_DIGIT | C_HEX | C_LOCAL;
        }
        if (c >= 'A' && c <= 'Z') {
            bits |= C_UPPER | C_LOCAL | (c <= 'F' ? C_HEX : 0);
        }
        if (c >= 'a' && c <= 'z') {
            bits |= C_LOWER | C_LOCAL | (c <= 'f' ? C_HEX : 0);
        }
        if (c == '_') {
            bits |= C_UNDER | C_LOCAL;
        }
        if (c == '-') {
            bits |= C_DASH | C_LOCAL;
        }
        if (c == '.' || c == '%' || c == '+') {
            bits |= C_LOCAL;
        }
        if (c == ' ' || (c >= '\t' && c <= '\r')) {
            bits |= C_SPACE;
        }
        CLS[c] = bits;
    }
    anchor_pairs_init();
    for (int c = 0; c < 256; c++) {
        IPV6_RUN[c] = (uint8_t)(c == ':' ? 2 : (CLS[c] & C_HEX) ? 1 : (CLS[c] & C_WORD) ? 4 : 0);
    }
    for (int c = 0; c < 256; c++) {
        CLUSTER_CLASS[c] = c >= '0' && c <= '9' ? 1 : strchr(" .-()+", c) != NULL && c != 0 ? 2 : 0;
    }
    casefold_name = PyUnicode_InternFromString("casefold");
    casefold_method = casefold_name ? PyObject_GetAttr((PyObject *)&PyUnicode_Type, casefold_name) : NULL;
    str_method = casefold_method ? PyObject_GetAttrString((PyObject *)&PyUnicode_Type, "__str__") : NULL;
    if (str_method == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "ABI", SCAN_ABI) < 0) {
        Py_CLEAR(module);
    }
    return module;
}
