/*
 * bcryptprimitives.dll for Wine 8, which lacks ProcessPrng.
 *
 * Rust's std on Windows imports bcryptprimitives.dll!ProcessPrng for its random numbers (HashMap
 * keys). Wine 8 does not export it, so every Rust .exe fails to load (exit code 53). This DLL
 * exports ProcessPrng by forwarding to advapi32's RtlGenRandom (SystemFunction036). It is built
 * with mingw by `cargo xtask` and installed into the test Wine prefix only; it never ships.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
