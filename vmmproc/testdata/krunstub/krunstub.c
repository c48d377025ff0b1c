/*
 * krunstub: a stand-in for libkrun.so.1 used by vmm's tests. It implements
 * the libkrun C API that msb uses and records every call, one line each,
 * with its arguments, into the file named by $KRUNSTUB_LOG:
 *
 *   krun_set_vm_config 7 2 512
 *   krun_add_virtiofs3 7 "tag" "/path" 0 1
 *   krun_set_env 7 ["A=1", "B=2"]          (NULL-terminated arrays; NULL as NULL)
 *
 * Environment:
 *   KRUNSTUB_LOG        the call log (appended to)
 *   KRUNSTUB_FAIL       name of one call that returns -EINVAL
 *   KRUNSTUB_EXIT       krun_start_enter exits the process with this status
 *   KRUNSTUB_EXIT_FILE  instead, krun_start_enter waits until this file exists
 *                       and exits with the status written in it
 *
 * Build variants (-D): KRUNSTUB_OLD leaves out the 1.10 symbols
 * (krun_add_disk2, krun_add_vsock_port2), krun_add_virtiofs3 and the TSI-free
 * vsock calls; KRUNSTUB_NO_VIRTIOFS3 leaves out krun_add_virtiofs3 (read-only
 * virtio-fs, libkrun 1.10-1.17); KRUNSTUB_NO_NOTSI leaves out the TSI-free
 * vsock calls (krun_disable_implicit_vsock, krun_add_vsock) of newer libkrun.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CTX_ID 7

static FILE *open_log(void)
{
	const char *p = getenv("KRUNSTUB_LOG");
	return p ? fopen(p, "a") : NULL;
}

static void put_str(FILE *f, const char *s)
{
	if (s)
		fprintf(f, " \"%s\"", s);
	else
		fputs(" NULL", f);
}

static void put_arr(FILE *f, const char *const *a)
{
	if (!a) {
		fputs(" NULL", f);
		return;
	}
	fputs(" [", f);
	for (int i = 0; a[i]; i++)
		fprintf(f, "%s\"%s\"", i ? ", " : "", a[i]);
	fputs("]", f);
}

/* result records the end of the line and returns -EINVAL for KRUNSTUB_FAIL. */
static int32_t result(FILE *f, const char *name)
{
	const char *fail = getenv("KRUNSTUB_FAIL");
	if (f) {
		fputc('\n', f);
		fclose(f);
	}
	if (fail && strcmp(fail, name) == 0)
		return -EINVAL;
	return 0;
}

static FILE *begin(const char *name)
{
	FILE *f = open_log();
	if (f)
		fputs(name, f);
	return f;
}

int32_t krun_set_log_level(uint32_t level)
{
	FILE *f = begin(__func__);
	if (f)
		fprintf(f, " %u", level);
	return result(f, __func__);
}

int32_t krun_create_ctx(void)
{
	FILE *f = begin(__func__);
	int32_t r = result(f, __func__);
	return r < 0 ? r : CTX_ID;
}

int32_t krun_free_ctx(uint32_t ctx)
{
	FILE *f = begin(__func__);
	if (f)
		fprintf(f, " %u", ctx);
	return result(f, __func__);
}

int32_t krun_set_vm_config(uint32_t ctx, uint8_t vcpus, uint32_t mib)
{
	FILE *f = begin(__func__);
	if (f)
		fprintf(f, " %u %u %u", ctx, vcpus, mib);
	return result(f, __func__);
}

static int32_t ctx_str(const char *name, uint32_t ctx, const char *s)
{
	FILE *f = begin(name);
	if (f) {
		fprintf(f, " %u", ctx);
		put_str(f, s);
	}
	return result(f, name);
}

int32_t krun_set_root(uint32_t ctx, const char *p) { return ctx_str(__func__, ctx, p); }
int32_t krun_set_workdir(uint32_t ctx, const char *p) { return ctx_str(__func__, ctx, p); }
int32_t krun_set_console_output(uint32_t ctx, const char *p) { return ctx_str(__func__, ctx, p); }

int32_t krun_add_virtiofs(uint32_t ctx, const char *tag, const char *path)
{
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, " %u", ctx);
		put_str(f, tag);
		put_str(f, path);
	}
	return result(f, __func__);
}

#if !defined(KRUNSTUB_OLD) && !defined(KRUNSTUB_NO_VIRTIOFS3)
int32_t krun_add_virtiofs3(uint32_t ctx, const char *tag, const char *path, uint64_t shm, bool ro)
{
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, " %u", ctx);
		put_str(f, tag);
		put_str(f, path);
		fprintf(f, " %llu %d", (unsigned long long)shm, ro);
	}
	return result(f, __func__);
}
#endif

#if !defined(KRUNSTUB_OLD) && !defined(KRUNSTUB_NO_NOTSI)
int32_t krun_disable_implicit_vsock(uint32_t ctx)
{
	FILE *f = begin(__func__);
	if (f)
		fprintf(f, " %u", ctx);
	return result(f, __func__);
}

int32_t krun_add_vsock(uint32_t ctx, uint32_t tsi_features)
{
	FILE *f = begin(__func__);
	if (f)
		fprintf(f, " %u %u", ctx, tsi_features);
	return result(f, __func__);
}
#endif

#ifndef KRUNSTUB_OLD
int32_t krun_add_disk2(uint32_t ctx, const char *id, const char *path, uint32_t format, bool ro)
{
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, " %u", ctx);
		put_str(f, id);
		put_str(f, path);
		fprintf(f, " %u %d", format, ro);
	}
	return result(f, __func__);
}

int32_t krun_add_vsock_port2(uint32_t ctx, uint32_t port, const char *path, bool listen)
{
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, " %u %u", ctx, port);
		put_str(f, path);
		fprintf(f, " %d", listen);
	}
	return result(f, __func__);
}
#endif

int32_t krun_set_exec(uint32_t ctx, const char *path, const char *const argv[], const char *const envp[])
{
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, " %u", ctx);
		put_str(f, path);
		put_arr(f, argv);
		put_arr(f, envp);
	}
	return result(f, __func__);
}

static int32_t ctx_arr(const char *name, uint32_t ctx, const char *const a[])
{
	FILE *f = begin(name);
	if (f) {
		fprintf(f, " %u", ctx);
		put_arr(f, a);
	}
	return result(f, name);
}

int32_t krun_set_env(uint32_t ctx, const char *const envp[]) { return ctx_arr(__func__, ctx, envp); }
int32_t krun_set_rlimits(uint32_t ctx, const char *const rl[]) { return ctx_arr(__func__, ctx, rl); }

int32_t krun_start_enter(uint32_t ctx)
{
	FILE *f = begin(__func__);
	const char *code = getenv("KRUNSTUB_EXIT");
	const char *file = getenv("KRUNSTUB_EXIT_FILE");
	if (f)
		fprintf(f, " %u", ctx);
	int32_t r = result(f, __func__);
	if (r < 0)
		return r;
	if (file) {
		for (;;) {
			FILE *e = fopen(file, "r");
			if (e) {
				int c = 0;
				if (fscanf(e, "%d", &c) == 1) {
					fclose(e);
					exit(c); /* like libkrun: exit(), so atexit handlers run */
				}
				fclose(e);
			}
			usleep(10000);
		}
	}
	exit(code ? atoi(code) : 0);
}
