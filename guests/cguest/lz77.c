/*
 * cguest — an LZ77 compressor and decompressor in C, as the non-Rust guest.
 *
 * Builds a synthetic buffer (pseudo-English text from a word list, runs, and a little
 * binary noise; seeded xorshift32, so fully deterministic), compresses it at three
 * levels (hash chains of different lengths, lazy matching at the top level),
 * decompresses each result, checks the round trip byte for byte, and prints sizes and
 * CRC-32s. Exits 1 if a round trip fails.
 *
 * Usage: cguest [MIB | --size MIB]     (input size in MiB, default 6)
 *
 * Built by scripts/build-guests with clang --target=wasm32-wasi and wasi-libc.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_BITS 16
#define WINDOW (1u << WINDOW_BITS)
#define HASH_BITS 15
#define HASH_SIZE (1u << HASH_BITS)
#define MIN_MATCH 4
#define MAX_MATCH (MIN_MATCH + 255)

static uint32_t rng_state = 0x2545F491u;

static uint32_t xorshift32(void) {
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static const char *WORDS[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with",
    "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
    "but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we",
    "migration", "checkpoint", "memory", "page", "chunk", "node", "peer", "gossip",
    "wasm", "guest", "host", "stack", "unwind", "rewind", "generation", "replica",
    "scheduler", "sporadic", "server", "budget", "period", "placement", "solver",
    "dual", "consensus", "bandwidth", "latency", "deterministic", "output",
};
#define NWORDS (sizeof(WORDS) / sizeof(WORDS[0]))

static void synthesize(uint8_t *buf, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t r = xorshift32();
        if (r % 100 < 2) { /* a run of one byte */
            size_t len = 8 + (xorshift32() % 200);
            uint8_t b = (uint8_t)xorshift32();
            for (size_t k = 0; k < len && i < n; k++) buf[i++] = b;
        } else if (r % 100 < 4) { /* binary noise */
            size_t len = 4 + (xorshift32() % 64);
            for (size_t k = 0; k < len && i < n; k++) buf[i++] = (uint8_t)xorshift32();
        } else { /* a sentence */
            size_t words = 3 + (xorshift32() % 12);
            for (size_t w = 0; w < words && i < n; w++) {
                /* Skewed choice: low indices (common words) are likelier. */
                uint32_t a = xorshift32() % NWORDS, b = xorshift32() % NWORDS;
                const char *word = WORDS[a < b ? a : b];
                for (const char *c = word; *c && i < n; c++) buf[i++] = (uint8_t)*c;
                if (i < n) buf[i++] = (w + 1 == words) ? '.' : ' ';
            }
            if (i < n) buf[i++] = (xorshift32() % 8 == 0) ? '\n' : ' ';
        }
    }
}

static inline uint32_t hash4(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return (v * 2654435761u) >> (32 - HASH_BITS);
}

typedef struct {
    int32_t head[HASH_SIZE];
    int32_t prev[WINDOW];
} Matcher;

static void insert(Matcher *m, const uint8_t *in, size_t pos) {
    uint32_t h = hash4(in + pos);
    m->prev[pos & (WINDOW - 1)] = m->head[h];
    m->head[h] = (int32_t)pos;
}

/* Longest match for position `pos`, searching at most `chain` candidates. */
static size_t longest(const Matcher *m, const uint8_t *in, size_t n, size_t pos, int chain,
                      size_t *dist) {
    size_t best = 0;
    size_t max = n - pos < MAX_MATCH ? n - pos : MAX_MATCH;
    if (max < MIN_MATCH) return 0;
    int32_t cand = m->head[hash4(in + pos)];
    while (cand >= 0 && chain-- > 0) {
        size_t c = (size_t)cand;
        if (pos - c >= WINDOW - 1) break;
        if (in[c + best] == in[pos + best]) {
            size_t len = 0;
            while (len < max && in[c + len] == in[pos + len]) len++;
            if (len > best) {
                best = len;
                *dist = pos - c;
                if (len == max) break;
            }
        }
        int32_t next = m->prev[c & (WINDOW - 1)];
        if (next >= cand) break;
        cand = next;
    }
    return best >= MIN_MATCH ? best : 0;
}

/*
 * Format: groups of up to 8 items, each group led by a flag byte (bit set = match).
 * Literal: 1 byte. Match: distance (2 bytes, little endian, 1..65535) + (length - MIN_MATCH).
 */
static size_t compress(const uint8_t *in, size_t n, uint8_t *out, int chain, int lazy) {
    static Matcher m;
    for (size_t i = 0; i < HASH_SIZE; i++) m.head[i] = -1;
    size_t o = 0, pos = 0;
    size_t flag_at = 0;
    int nitems = 8;
    while (pos < n) {
        if (nitems == 8) {
            flag_at = o++;
            out[flag_at] = 0;
            nitems = 0;
        }
        size_t dist = 0, len = (pos + MIN_MATCH <= n) ? longest(&m, in, n, pos, chain, &dist) : 0;
        if (len && lazy && pos + 1 + MIN_MATCH <= n) {
            /* Lazy matching: emit a literal if the next position matches longer. */
            insert(&m, in, pos);
            size_t d2 = 0, l2 = longest(&m, in, n, pos + 1, chain, &d2);
            if (l2 > len + 1) {
                out[o++] = in[pos];
                pos++;
                nitems++;
                continue;
            }
            out[flag_at] |= (uint8_t)(1u << nitems);
            out[o++] = (uint8_t)dist;
            out[o++] = (uint8_t)(dist >> 8);
            out[o++] = (uint8_t)(len - MIN_MATCH);
            for (size_t k = 1; k < len; k++)
                if (pos + k + MIN_MATCH <= n) insert(&m, in, pos + k);
            pos += len;
        } else if (len) {
            out[flag_at] |= (uint8_t)(1u << nitems);
            out[o++] = (uint8_t)dist;
            out[o++] = (uint8_t)(dist >> 8);
            out[o++] = (uint8_t)(len - MIN_MATCH);
            for (size_t k = 0; k < len; k++)
                if (pos + k + MIN_MATCH <= n) insert(&m, in, pos + k);
            pos += len;
        } else {
            if (pos + MIN_MATCH <= n) insert(&m, in, pos);
            out[o++] = in[pos++];
        }
        nitems++;
    }
    return o;
}

/* Returns the decompressed size, or (size_t)-1 on malformed input. */
static size_t decompress(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t flags = in[i++];
        for (int k = 0; k < 8 && i < n; k++) {
            if (flags & (1u << k)) {
                if (i + 3 > n) return (size_t)-1;
                size_t dist = in[i] | ((size_t)in[i + 1] << 8);
                size_t len = (size_t)in[i + 2] + MIN_MATCH;
                i += 3;
                if (dist == 0 || dist > o || o + len > cap) return (size_t)-1;
                for (size_t j = 0; j < len; j++, o++) out[o] = out[o - dist];
            } else {
                if (o >= cap) return (size_t)-1;
                out[o++] = in[i++];
            }
        }
    }
    return o;
}

int main(int argc, char **argv) {
    long mib = 6;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            mib = atol(argv[++i]);
        } else if (i == 1 && argv[i][0] != '-') {
            mib = atol(argv[i]);
        }
    }
    if (mib < 1 || mib > 256) {
        fprintf(stderr, "error: size must be 1..256 MiB\n");
        return 2;
    }
    size_t n = (size_t)mib << 20;
    crc_init();
    uint8_t *in = malloc(n);
    uint8_t *packed = malloc(n + n / 4 + 64);
    uint8_t *back = malloc(n);
    if (!in || !packed || !back) {
        fprintf(stderr, "error: out of memory\n");
        return 2;
    }
    synthesize(in, n);
    uint32_t crc_in = crc32(in, n);
    printf("cguest lz77: input %zu bytes crc32 %08x\n", n, crc_in);

    static const struct { int chain, lazy; const char *name; } LEVELS[] = {
        {4, 0, "fast"}, {32, 0, "normal"}, {128, 1, "best"},
    };
    uint64_t sum = 0xCBF29CE484222325ull;
    int failed = 0;
    for (size_t l = 0; l < sizeof(LEVELS) / sizeof(LEVELS[0]); l++) {
        /* Compress in 256 KiB blocks so progress is visible and output stays small. */
        size_t block = 256u << 10, total = 0;
        uint32_t crc_packed = 0;
        for (size_t off = 0; off < n; off += block) {
            size_t len = n - off < block ? n - off : block;
            size_t c = compress(in + off, len, packed + total, LEVELS[l].chain, LEVELS[l].lazy);
            size_t d = decompress(packed + total, c, back + off, len);
            if (d != len || memcmp(back + off, in + off, len) != 0) {
                printf("level %s block %zu: ROUND TRIP FAILED\n", LEVELS[l].name, off / block);
                failed = 1;
            }
            crc_packed = crc32(packed + total, c) ^ (crc_packed * 31u);
            total += c;
            if ((off / block) % 4 == 3)
                printf("level %s: %zu KiB in, %zu bytes out\n", LEVELS[l].name,
                       (off + len) >> 10, total);
        }
        uint32_t crc_back = crc32(back, n);
        printf("level %-6s chain=%3d lazy=%d: %zu -> %zu bytes (%.2f%%) packed-crc %08x "
               "roundtrip-crc %08x %s\n",
               LEVELS[l].name, LEVELS[l].chain, LEVELS[l].lazy, n, total,
               100.0 * (double)total / (double)n, crc_packed, crc_back,
               crc_back == crc_in ? "ok" : "MISMATCH");
        if (crc_back != crc_in) failed = 1;
        sum = (sum ^ total) * 0x100000001B3ull;
        sum = (sum ^ crc_packed) * 0x100000001B3ull;
    }
    printf("checksum %016llx\n", (unsigned long long)sum);
    free(in);
    free(packed);
    free(back);
    return failed;
}
