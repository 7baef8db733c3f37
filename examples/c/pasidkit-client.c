/* A minimal C client of `pasidkit serve` (the wire protocol of ../shared/spec/WIRE.md), for a
 * VMM developer to copy: it opens /dev/iommu over the socket, maps a buffer into its own
 * emulated address space, allocates an IOAS, attaches a selftest mock device (a paging domain),
 * maps the buffer for DMA and prints what the kernel answered. The structs are the Linux uAPI
 * layouts (include/uapi/linux/iommufd.h, drivers/iommu/iommufd/iommufd_test.h), defined here so
 * that no kernel headers are needed. Build: make; run: ./pasidkit-client [SOCKET]. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { OP_OPEN = 1, OP_CLOSE = 2, OP_IOCTL = 3, OP_MMAP = 4, OP_POKE = 7 };
#define IOMMU_DESTROY 0x3b80u /* _IO(';', 0x80) */
#define IOMMU_IOAS_ALLOC 0x3b81u
#define IOMMU_IOAS_MAP 0x3b85u
#define IOMMU_TEST_CMD 0x3ba0u /* _IO(';', 0x80 + 32), CONFIG_IOMMUFD_TEST */
#define IOMMU_IOAS_MAP_FIXED_IOVA 1u
#define IOMMU_IOAS_MAP_WRITEABLE 2u
#define IOMMU_IOAS_MAP_READABLE 4u
#define IOMMU_TEST_OP_MOCK_DOMAIN 2u

struct wire_mmap { uint64_t length; uint32_t prot, flags; uint64_t offset; }; /* MMAP's payload */
struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_ioas_map {
	uint32_t size, flags, ioas_id, __reserved;
	uint64_t user_va, length, iova;
};
struct iommu_test_cmd {
	uint32_t size, op, id, __reserved;
	union {
		struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
		uint64_t raw[6]; /* the union is 48 bytes, 8-byte aligned */
	};
	uint32_t last;
};
_Static_assert(sizeof(struct iommu_test_cmd) == 72, "iommu_test_cmd layout");

static int sock;
static uint32_t next_tag = 1;

static int send_all(const void *p, size_t n) {
	for (size_t done = 0; done < n;) {
		ssize_t r = send(sock, (const char *)p + done, n - done, MSG_NOSIGNAL);
		if (r <= 0) return -1;
		done += (size_t)r;
	}
	return 0;
}
static int recv_all(void *p, size_t n) {
	for (size_t done = 0; done < n;) {
		ssize_t r = recv(sock, (char *)p + done, n - done, 0);
		if (r <= 0) return -1;
		done += (size_t)r;
	}
	return 0;
}

/* One request, one reply: returns ret (>= 0, or -errno); copies the reply payload to out. */
static int64_t call(uint32_t op, int32_t fd, const void *a, uint32_t alen, const void *b,
		    uint32_t blen, void *out, uint32_t outlen) {
	uint32_t hdr[4] = { 12 + alen + blen, op, next_tag++, (uint32_t)fd }, rh[4];
	int64_t ret;
	/* request: u32 length | u32 op | u32 tag | i32 fd | payload; response: u32 length |
	 * u32 tag | i64 ret | payload (all little-endian, as on x86 and arm64) */
	if (send_all(hdr, 16) || send_all(a, alen) || send_all(b, blen) || recv_all(rh, 16))
		return -1000;
	memcpy(&ret, &rh[2], 8);
	if (rh[1] != hdr[2] || rh[0] - 12 > outlen) return -1001;
	if (recv_all(out, rh[0] - 12)) return -1000;
	return ret;
}
static int64_t ioctl_(int32_t fd, uint32_t req, void *arg, uint32_t len) {
	return call(OP_IOCTL, fd, &req, 4, arg, len, arg, len);
}

int main(int argc, char **argv) {
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strncpy(sa.sun_path, argc > 1 ? argv[1] : "pasidkit.sock", sizeof(sa.sun_path) - 1);
	sock = socket(AF_UNIX, SOCK_STREAM, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("connect");
		return 1;
	}
	int32_t fd = (int32_t)call(OP_OPEN, -1, "/dev/iommu", 10, NULL, 0, NULL, 0);
	printf("open /dev/iommu: fd %d\n", fd);

	/* 64 KiB of this connection's memory: mmap(NULL, len, RW, MAP_SHARED|MAP_ANONYMOUS). */
	struct wire_mmap mm = { .length = 65536, .prot = 3 /* READ|WRITE */, .flags = 0x21 };
	int64_t r = call(OP_MMAP, -1, &mm, sizeof(mm), NULL, 0, NULL, 0);
	uint64_t va = (uint64_t)r, len = mm.length;
	printf("mmap: va 0x%llx\n", (unsigned long long)va);
	call(OP_POKE, -1, &va, 8, "hello, DMA", 10, NULL, 0);

	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	r = ioctl_(fd, IOMMU_IOAS_ALLOC, &alloc, sizeof(alloc));
	printf("IOMMU_IOAS_ALLOC: ret %lld, ioas %u\n", (long long)r, alloc.out_ioas_id);

	struct iommu_test_cmd tc = { .size = sizeof(tc), .op = IOMMU_TEST_OP_MOCK_DOMAIN,
				     .id = alloc.out_ioas_id };
	r = ioctl_(fd, IOMMU_TEST_CMD, &tc, sizeof(tc));
	printf("IOMMU_TEST_CMD MOCK_DOMAIN: ret %lld, stdev %u hwpt %u idev %u\n", (long long)r,
	       tc.mock_domain.out_stdev_id, tc.mock_domain.out_hwpt_id, tc.mock_domain.out_idev_id);

	struct iommu_ioas_map map = { .size = sizeof(map), .ioas_id = alloc.out_ioas_id,
				      .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
				      .user_va = va, .length = len };
	r = ioctl_(fd, IOMMU_IOAS_MAP, &map, sizeof(map));
	printf("IOMMU_IOAS_MAP: ret %lld, iova 0x%llx\n", (long long)r, (unsigned long long)map.iova);

	/* The same IOVA again: the kernel refuses an overlapping map with EEXIST. */
	map.flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
	r = ioctl_(fd, IOMMU_IOAS_MAP, &map, sizeof(map));
	printf("IOMMU_IOAS_MAP again: ret %lld (%s)\n", (long long)r, r < 0 ? strerror((int)-r) : "ok");

	uint32_t destroy[2] = { 8, alloc.out_ioas_id };
	r = ioctl_(fd, IOMMU_DESTROY, destroy, sizeof(destroy));
	printf("IOMMU_DESTROY of the IOAS while a domain uses it: ret %lld (%s)\n", (long long)r,
	       r < 0 ? strerror((int)-r) : "ok");
	printf("close: ret %lld\n", (long long)call(OP_CLOSE, fd, NULL, 0, NULL, 0, NULL, 0));
	close(sock);
	return 0;
}
