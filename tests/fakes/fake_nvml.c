/* A stand-in for libnvidia-ml.so.1 at the transport: the NVML C calls hashplane makes
 * through pynvml (nvidia-ml-py), answered from recorded cards.  Built by the tests with the
 * system C compiler and loaded by pynvml exactly as the driver's library is.
 *
 *   FAKE_NVML_CARDS  file of cards: "key value" lines, a blank line between cards;
 *                    a value "NA" makes that query answer NVML_ERROR_NOT_SUPPORTED
 *   FAKE_NVML_FAULT  faults to inject, read at every call: "init=9" (nvmlInit returns 9,
 *                    driver not loaded), "lost=1" (GPU 1 answers NVML_ERROR_GPU_IS_LOST),
 *                    "set=4" (every setter answers NVML_ERROR_NO_PERMISSION)
 *   FAKE_NVML_LOG    file each setter call is appended to ("power_limit 1 200000")
 *   FAKE_NVML_XID    Xid critical errors the event set reports, once each, in order:
 *                    "1:79,0:13" (GPU 1 fell off the bus, then GPU 0 a graphics fault)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUCCESS 0
#define UNINITIALIZED 1
#define INVALID_ARGUMENT 2
#define NOT_SUPPORTED 3
#define INSUFFICIENT_SIZE 7
#define GPU_IS_LOST 15
#define NA (-1LL)
#define MAX_CARDS 16

typedef struct {
    char name[96], uuid[96];
    long long temp, mem_temp, power_mw, limit_mw, min_mw, max_mw, default_mw;
    long long gr, sm, mem, max_gr, max_mem, fan, util_gpu, util_mem;
    long long mem_total, mem_used, throttle, ecc;
    long long lock_lo, lock_hi, gpc_offset, mem_offset;
    int index;
} card;

typedef struct { unsigned int gpu, memory; } utilization;
typedef struct { unsigned long long total, free, used; } memory_info;
typedef struct {
    unsigned int field_id, scope_id;
    long long timestamp, latency_us;
    unsigned int value_type, nvml_return;
    union { double d; unsigned int ui; unsigned long long ull; } value;
} field_value;

static card cards[MAX_CARDS];
static int ncards = -1;

static long long fault(const char *what) {
    const char *env = getenv("FAKE_NVML_FAULT");
    size_t n = strlen(what);
    if (!env) return -1;
    for (const char *p = env; (p = strstr(p, what)); p += n)
        if ((p == env || p[-1] == ',') && p[n] == '=') return atoll(p + n + 1);
    return -1;
}

static void record(const char *fmt, int index, long long a, long long b) {
    const char *path = getenv("FAKE_NVML_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f) return;
    fprintf(f, fmt, index, a, b);
    fputc('\n', f);
    fclose(f);
}

static long long number(const char *v) { return strcmp(v, "NA") == 0 ? NA : atoll(v); }

static void load(void) {
    const char *path = getenv("FAKE_NVML_CARDS");
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[256], key[64], val[160];
    card *c = NULL;
    ncards = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        if (sscanf(line, "%63s %159[^\n]", key, val) != 2) { c = NULL; continue; }
        if (!c) {
            if (ncards == MAX_CARDS) break;
            c = &cards[ncards];
            memset(c, 0, sizeof *c);
            c->index = ncards++;
            c->lock_lo = c->lock_hi = NA;
        }
        if (!strcmp(key, "name")) snprintf(c->name, sizeof c->name, "%.95s", val);
        else if (!strcmp(key, "uuid")) snprintf(c->uuid, sizeof c->uuid, "%.95s", val);
#define FIELD(k) else if (!strcmp(key, #k)) c->k = number(val);
        FIELD(temp) FIELD(mem_temp) FIELD(power_mw) FIELD(limit_mw) FIELD(min_mw)
        FIELD(max_mw) FIELD(default_mw) FIELD(gr) FIELD(sm) FIELD(mem) FIELD(max_gr)
        FIELD(max_mem) FIELD(fan) FIELD(util_gpu) FIELD(util_mem) FIELD(mem_total)
        FIELD(mem_used) FIELD(throttle) FIELD(ecc)
    }
    fclose(f);
}

static int check(card *c) {
    if (ncards < 0) return UNINITIALIZED;
    if (!c) return INVALID_ARGUMENT;
    if (fault("lost") == c->index) return GPU_IS_LOST;
    return SUCCESS;
}

static int answer_u(card *c, long long v, unsigned int *out) {
    int rc = check(c);
    if (rc) return rc;
    if (v == NA) return NOT_SUPPORTED;
    *out = (unsigned int)v;
    return SUCCESS;
}

int nvmlInitWithFlags(unsigned int flags) {
    long long rc = fault("init");
    (void)flags;
    if (rc > 0) return (int)rc;
    load();
    return SUCCESS;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return SUCCESS; }

const char *nvmlErrorString(int result) {
    switch (result) {
    case SUCCESS: return "Success";
    case UNINITIALIZED: return "Uninitialized";
    case INVALID_ARGUMENT: return "Invalid Argument";
    case NOT_SUPPORTED: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 9: return "Driver Not Loaded";
    case GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (ncards < 0) return UNINITIALIZED;
    *count = (unsigned int)ncards;
    return SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, card **device) {
    if (ncards < 0) return UNINITIALIZED;
    if (index >= (unsigned int)ncards) return INVALID_ARGUMENT;
    *device = &cards[index];
    return SUCCESS;
}

static int text(card *c, const char *s, char *out, unsigned int len) {
    int rc = check(c);
    if (rc) return rc;
    if (strlen(s) + 1 > len) return INSUFFICIENT_SIZE;
    strcpy(out, s);
    return SUCCESS;
}
int nvmlDeviceGetName(card *c, char *out, unsigned int len) { return text(c, c ? c->name : "", out, len); }
int nvmlDeviceGetUUID(card *c, char *out, unsigned int len) { return text(c, c ? c->uuid : "", out, len); }

int nvmlDeviceGetTemperature(card *c, int sensor, unsigned int *t) {
    if (sensor != 0) return INVALID_ARGUMENT;
    return answer_u(c, c ? c->temp : NA, t);
}

int nvmlDeviceGetFieldValues(card *c, int n, field_value *values) {
    int rc = check(c);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        values[i].value_type = 1; /* unsigned int */
        if (values[i].field_id == 82 && c->mem_temp != NA) { /* NVML_FI_DEV_MEMORY_TEMP */
            values[i].value.ui = (unsigned int)c->mem_temp;
            values[i].nvml_return = SUCCESS;
        } else {
            values[i].nvml_return = NOT_SUPPORTED;
        }
    }
    return SUCCESS;
}

int nvmlDeviceGetPowerUsage(card *c, unsigned int *mw) {
    long long v = c ? c->power_mw : NA;
    if (c && v != NA && v > c->limit_mw) v = c->limit_mw; /* the limit holds the draw */
    return answer_u(c, v, mw);
}
int nvmlDeviceGetPowerManagementLimit(card *c, unsigned int *mw) { return answer_u(c, c ? c->limit_mw : NA, mw); }
int nvmlDeviceGetPowerManagementDefaultLimit(card *c, unsigned int *mw) { return answer_u(c, c ? c->default_mw : NA, mw); }
int nvmlDeviceGetPowerManagementLimitConstraints(card *c, unsigned int *lo, unsigned int *hi) {
    int rc = answer_u(c, c ? c->min_mw : NA, lo);
    return rc ? rc : answer_u(c, c->max_mw, hi);
}

int nvmlDeviceGetClockInfo(card *c, int type, unsigned int *mhz) {
    long long v;
    if (!c) return INVALID_ARGUMENT;
    v = type == 0 ? c->gr : type == 1 ? c->sm : type == 2 ? c->mem : NA;
    if (type != 2 && v != NA && c->lock_hi != NA && v > c->lock_hi) v = c->lock_hi;
    return answer_u(c, v, mhz);
}
int nvmlDeviceGetMaxClockInfo(card *c, int type, unsigned int *mhz) {
    if (!c) return INVALID_ARGUMENT;
    return answer_u(c, type == 0 || type == 1 ? c->max_gr : type == 2 ? c->max_mem : NA, mhz);
}
int nvmlDeviceGetFanSpeed(card *c, unsigned int *pct) { return answer_u(c, c ? c->fan : NA, pct); }

int nvmlDeviceGetUtilizationRates(card *c, utilization *u) {
    int rc = check(c);
    if (rc) return rc;
    if (c->util_gpu == NA) return NOT_SUPPORTED;
    u->gpu = (unsigned int)c->util_gpu;
    u->memory = (unsigned int)(c->util_mem == NA ? 0 : c->util_mem);
    return SUCCESS;
}

int nvmlDeviceGetMemoryInfo(card *c, memory_info *m) {
    int rc = check(c);
    if (rc) return rc;
    if (c->mem_total == NA) return NOT_SUPPORTED;
    m->total = (unsigned long long)c->mem_total;
    m->used = (unsigned long long)c->mem_used;
    m->free = m->total - m->used;
    return SUCCESS;
}

int nvmlDeviceGetCurrentClocksEventReasons(card *c, unsigned long long *mask) {
    int rc = check(c);
    if (rc) return rc;
    if (c->throttle == NA) return NOT_SUPPORTED;
    *mask = (unsigned long long)c->throttle;
    return SUCCESS;
}

int nvmlDeviceGetTotalEccErrors(card *c, int error_type, int counter_type, unsigned long long *n) {
    int rc = check(c);
    (void)error_type; (void)counter_type;
    if (rc) return rc;
    if (c->ecc == NA) return NOT_SUPPORTED;
    *n = (unsigned long long)c->ecc;
    return SUCCESS;
}

static int setter(card *c) {
    int rc = check(c);
    long long denied = fault("set");
    return rc ? rc : denied > 0 ? (int)denied : SUCCESS;
}

int nvmlDeviceSetPowerManagementLimit(card *c, unsigned int mw) {
    int rc = setter(c);
    if (rc) return rc;
    if (mw < c->min_mw || mw > c->max_mw) return INVALID_ARGUMENT; /* as the driver does */
    c->limit_mw = mw;
    record("power_limit %d %lld", c->index, mw, 0);
    return SUCCESS;
}

int nvmlDeviceSetGpuLockedClocks(card *c, unsigned int lo, unsigned int hi) {
    int rc = setter(c);
    if (rc) return rc;
    if (lo > hi) return INVALID_ARGUMENT;
    c->lock_lo = lo;
    c->lock_hi = hi;
    record("locked_clocks %d %lld %lld", c->index, lo, hi);
    return SUCCESS;
}

int nvmlDeviceResetGpuLockedClocks(card *c) {
    int rc = setter(c);
    if (rc) return rc;
    c->lock_lo = c->lock_hi = NA;
    record("reset_locked_clocks %d", c->index, 0, 0);
    return SUCCESS;
}

int nvmlDeviceSetApplicationsClocks(card *c, unsigned int mem, unsigned int gr) {
    int rc = setter(c);
    if (rc) return rc;
    if (c->max_gr == NA) return NOT_SUPPORTED; /* GeForce cards refuse application clocks */
    if (gr > c->max_gr || mem > c->max_mem) return INVALID_ARGUMENT;
    record("application_clocks %d %lld %lld", c->index, mem, gr);
    return SUCCESS;
}

static int set_offset(card *c, long long *field, int mhz, const char *fmt) {
    int rc = setter(c);
    if (rc) return rc;
    *field = mhz;
    record(fmt, c->index, mhz, 0);
    return SUCCESS;
}

int nvmlDeviceSetGpcClkVfOffset(card *c, int mhz) {
    return set_offset(c, c ? &c->gpc_offset : NULL, mhz, "gpc_offset %d %lld");
}

int nvmlDeviceSetMemClkVfOffset(card *c, int mhz) {
    return set_offset(c, c ? &c->mem_offset : NULL, mhz, "mem_offset %d %lld");
}

/* -- events: Xid critical errors ------------------------------------------------------ */

typedef struct {
    card *device;
    unsigned long long event_type, event_data;
    unsigned int gpu_instance, compute_instance;
} event_data;

static int event_set_token;
static unsigned long long registered[MAX_CARDS];
static char xid_seen[256];
static int xid_next;

int nvmlDeviceGetIndex(card *c, unsigned int *index) {
    int rc = check(c);
    if (rc) return rc;
    *index = (unsigned int)c->index;
    return SUCCESS;
}

int nvmlEventSetCreate(void **set) {
    if (ncards < 0) return UNINITIALIZED;
    *set = &event_set_token;
    return SUCCESS;
}

int nvmlEventSetFree(void *set) { (void)set; return SUCCESS; }

int nvmlDeviceRegisterEvents(card *c, unsigned long long types, void *set) {
    int rc = check(c);
    if (rc) return rc;
    if (set != &event_set_token) return INVALID_ARGUMENT;
    registered[c->index] |= types;
    return SUCCESS;
}

int nvmlEventSetWait_v2(void *set, event_data *data, unsigned int timeout_ms) {
    const char *env = getenv("FAKE_NVML_XID");
    int k = 0;
    (void)timeout_ms;
    if (set != &event_set_token) return INVALID_ARGUMENT;
    if (!env) env = "";
    if (strncmp(env, xid_seen, sizeof xid_seen) != 0) { /* a new script: from its start */
        snprintf(xid_seen, sizeof xid_seen, "%s", env);
        xid_next = 0;
    }
    for (const char *p = env; *p; k++) {
        int gpu = atoi(p);
        const char *colon = strchr(p, ':');
        const char *comma = strchr(p, ',');
        if (!colon) break;
        if (k == xid_next) {
            xid_next++;
            if (gpu < 0 || gpu >= ncards || !(registered[gpu] & 0x8)) goto next;
            memset(data, 0, sizeof *data);
            data->device = &cards[gpu];
            data->event_type = 0x8; /* nvmlEventTypeXidCriticalError */
            data->event_data = (unsigned long long)atoll(colon + 1);
            return SUCCESS;
        }
    next:
        if (!comma) break;
        p = comma + 1;
    }
    return 10; /* NVML_ERROR_TIMEOUT: nothing happened */
}
