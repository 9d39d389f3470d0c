/**
 * Services, EndpointSlices and Pods as the apiserver accepts them. `normalize*` reads a parsed
 * manifest, applies the defaults the apiserver applies and validates; `validate*` checks a
 * typed object again (after the allocator filled in ClusterIPs and NodePorts, or one built in
 * code). Both throw ObjectInvalidError listing every problem, worded as kubectl shows them.
 *
 * Allocation is not here: ClusterIPs, ipFamilies, NodePorts and healthCheckNodePort are the
 * allocator's, against the cluster plan, so a Service is valid here without them.
 */
export { normalizeService, validateService } from "./service.js";
export { normalizeEndpointSlice, validateEndpointSlice } from "./endpoint-slice.js";
export { normalizePod, validatePod } from "./pod.js";
export { formatFieldError, ObjectInvalidError, type FieldError, type FieldErrorType } from "./field-errors.js";
