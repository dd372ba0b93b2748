/* libfaketime 0.9.10 fakes clock_gettime but not glibc's 64-bit-time entry point
 * __clock_gettime64, which Rust's standard library calls on 32-bit ARM. Preloaded before
 * libfaketime, this forwards __clock_gettime64 to the (faked) clock_gettime, so
 * tests/clock.rs can move an armv7 edgehook's clock under qemu. Test use only: it is
 * correct until 2038. Built by scripts/lib/cross.sh. */
#define _GNU_SOURCE
#include <stdint.h>
#include <time.h>

struct timespec64 {
    int64_t tv_sec;
    int32_t tv_nsec;
    int32_t pad;
};

int __clock_gettime64(clockid_t clock, struct timespec64 *ts)
{
    struct timespec t;
    int r = clock_gettime(clock, &t);
    if (r == 0) {
        ts->tv_sec = t.tv_sec;
        ts->tv_nsec = (int32_t)t.tv_nsec;
        ts->pad = 0;
    }
    return r;
}
