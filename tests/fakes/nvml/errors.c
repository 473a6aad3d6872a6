/* NVML return codes: their names (for the inventory and FAKE_NVML_FAIL_INIT), their messages
 * (nvmlErrorString) and the lookup of injected failures. */
#include <stdlib.h>
#include <string.h>

#include "fake_nvml.h"

struct code_entry {
    nvmlReturn_t code;
    const char *name; /* NVML_ERROR_<name> */
    const char *message;
};

static const struct code_entry CODES[] = {
    {NVML_SUCCESS, "SUCCESS", "Success"},
    {NVML_ERROR_UNINITIALIZED, "UNINITIALIZED", "Uninitialized"},
    {NVML_ERROR_INVALID_ARGUMENT, "INVALID_ARGUMENT", "Invalid Argument"},
    {NVML_ERROR_NOT_SUPPORTED, "NOT_SUPPORTED", "Not Supported"},
    {NVML_ERROR_NO_PERMISSION, "NO_PERMISSION", "Insufficient Permissions"},
    {NVML_ERROR_ALREADY_INITIALIZED, "ALREADY_INITIALIZED", "Already Initialized"},
    {NVML_ERROR_NOT_FOUND, "NOT_FOUND", "Not Found"},
    {NVML_ERROR_INSUFFICIENT_SIZE, "INSUFFICIENT_SIZE", "Insufficient Size"},
    {NVML_ERROR_INSUFFICIENT_POWER, "INSUFFICIENT_POWER", "Insufficient External Power"},
    {NVML_ERROR_DRIVER_NOT_LOADED, "DRIVER_NOT_LOADED", "Driver Not Loaded"},
    {NVML_ERROR_TIMEOUT, "TIMEOUT", "Timeout"},
    {NVML_ERROR_IRQ_ISSUE, "IRQ_ISSUE", "Interrupt Request Issue"},
    {NVML_ERROR_LIBRARY_NOT_FOUND, "LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"},
    {NVML_ERROR_FUNCTION_NOT_FOUND, "FUNCTION_NOT_FOUND", "Function Not Found"},
    {NVML_ERROR_CORRUPTED_INFOROM, "CORRUPTED_INFOROM", "Corrupted infoROM"},
    {NVML_ERROR_GPU_IS_LOST, "GPU_IS_LOST", "GPU is lost"},
    {NVML_ERROR_RESET_REQUIRED, "RESET_REQUIRED", "GPU requires restart"},
    {NVML_ERROR_OPERATING_SYSTEM, "OPERATING_SYSTEM", "The operating system has blocked the request."},
    {NVML_ERROR_LIB_RM_VERSION_MISMATCH, "LIB_RM_VERSION_MISMATCH", "RM has detected an NVML/RM version mismatch."},
    {NVML_ERROR_IN_USE, "IN_USE", "In use by another client"},
    {NVML_ERROR_MEMORY, "MEMORY", "Insufficient Memory"},
    {NVML_ERROR_NO_DATA, "NO_DATA", "No data"},
    {NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "ARGUMENT_VERSION_MISMATCH", "Version mismatch between NVML and the argument"},
    {NVML_ERROR_UNKNOWN, "UNKNOWN", "Unknown Error"},
};

#define CODE_COUNT (sizeof(CODES) / sizeof(CODES[0]))

int fake_error_code_from_text(const char *text, nvmlReturn_t *out)
{
    const char *name = text;
    char *end = NULL;
    long number;
    size_t i;

    number = strtol(text, &end, 10);
    if (*text != '\0' && *end == '\0') {
        *out = (nvmlReturn_t)number;
        return 0;
    }
    if (strncmp(name, "NVML_ERROR_", 11) == 0)
        name += 11;
    for (i = 0; i < CODE_COUNT; i++) {
        if (strcmp(CODES[i].name, name) == 0) {
            *out = CODES[i].code;
            return 0;
        }
    }
    return -1;
}

nvmlReturn_t fake_injected_error(const struct fake_error *errors, size_t count, const char *function)
{
    size_t i;
    for (i = 0; i < count; i++) {
        if (strcmp(errors[i].function, function) == 0)
            return errors[i].code;
    }
    return NVML_SUCCESS;
}

FAKE_NVML_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    size_t i;
    for (i = 0; i < CODE_COUNT; i++) {
        if (CODES[i].code == result)
            return CODES[i].message;
    }
    return "Unknown Error";
}
