// Decoding and encoding of startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
import { isUtf8 } from 'node:buffer';
import { featureNotSupported, invalidAuthorization, protocolViolation } from '../errors.js';
import { CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET, PROTOCOL_VERSION_3_0, SSL_REQUEST_CODE, } from './constants.js';
/** Protocol 3.0 has 4-byte cancel keys; 3.2 allows up to 256. */
const MIN_CANCEL_KEY = 4;
const MAX_CANCEL_KEY = 256;
const exactlyEight = (kind) => (packet) => {
    if (packet.length !== 8)
        throw protocolViolation(`invalid length of ${kind} packet`);
    return { kind };
};
const decodeCancelRequest = (packet) => {
    const keyLength = packet.length - 12;
    if (keyLength < MIN_CANCEL_KEY || keyLength > MAX_CANCEL_KEY) {
        throw protocolViolation('invalid length of cancel request packet');
    }
    return {
        kind: 'CancelRequest',
        processId: packet.readInt32BE(8),
        // Copied so the caller does not keep the whole receive chunk alive.
        secretKey: Buffer.from(packet.subarray(12)),
    };
};
/** Special request codes; any other code is read as a protocol version. */
const requestDecoders = new Map([
    [SSL_REQUEST_CODE, exactlyEight('SSLRequest')],
    [GSSENC_REQUEST_CODE, exactlyEight('GSSENCRequest')],
    [CANCEL_REQUEST_CODE, decodeCancelRequest],
]);
/** Decodes a packet as returned by MessageReader.readStartupPacket (length field included). */
export function decodeStartupPacket(packet) {
    if (packet.length < 8 || packet.length > MAX_STARTUP_PACKET || packet.readInt32BE(0) !== packet.length) {
        throw protocolViolation('invalid length of startup packet');
    }
    const code = packet.readInt32BE(4);
    const decode = requestDecoders.get(code);
    return decode ? decode(packet) : decodeStartupMessage(packet, code);
}
function decodeStartupMessage(packet, version) {
    const major = version >>> 16;
    const minorVersion = version & 0xffff;
    // Same SQLSTATE and wording as PostgreSQL; minor versions above 0 are left to the
    // caller, which answers them with NegotiateProtocolVersion.
    if (major !== 3) {
        throw featureNotSupported(`unsupported frontend protocol ${major}.${minorVersion}: server supports 3.0 to 3.0`);
    }
    if (packet[packet.length - 1] !== 0) {
        throw protocolViolation('invalid startup packet layout: expected terminator as last byte');
    }
    // Everything between the version and the final terminator: name\0value\0 pairs.
    const pairs = packet.subarray(8, packet.length - 1);
    if (!isUtf8(pairs))
        throw protocolViolation('invalid byte sequence for encoding "UTF8" in startup packet');
    const parameters = new Map();
    if (pairs.length > 0) {
        if (pairs[pairs.length - 1] !== 0) {
            throw protocolViolation('invalid startup packet layout: expected terminator as last byte');
        }
        const strings = pairs.toString('utf8', 0, pairs.length - 1).split('\0');
        if (strings.length % 2 !== 0) {
            throw protocolViolation('invalid startup packet layout: parameter name without a value');
        }
        for (let i = 0; i < strings.length; i += 2) {
            const name = strings[i];
            // An empty name is the list terminator, so one here means bytes after the end.
            if (name === '') {
                throw protocolViolation('invalid startup packet layout: expected terminator as last byte');
            }
            if (parameters.has(name))
                throw protocolViolation(`duplicate startup parameter "${name}"`);
            parameters.set(name, strings[i + 1]);
        }
    }
    if (!parameters.get('user')) {
        // PostgreSQL answers this with 28000, not 08P01.
        throw invalidAuthorization('no PostgreSQL user name specified in startup packet');
    }
    return { kind: 'StartupMessage', minorVersion, parameters };
}
/** Builds a StartupMessage; used to open upstream connections and in tests. */
export function encodeStartupMessage(parameters, minorVersion = 0) {
    const entries = parameters instanceof Map ? [...parameters] : Object.entries(parameters);
    const parts = [];
    for (const [name, value] of entries) {
        if (name === '' || name.includes('\0') || value.includes('\0')) {
            throw new TypeError(`startup parameter ${JSON.stringify(name)} cannot be encoded`);
        }
        parts.push(Buffer.from(`${name}\0${value}\0`, 'utf8'));
    }
    const body = Buffer.concat(parts);
    const packet = Buffer.alloc(8 + body.length + 1);
    packet.writeInt32BE(packet.length, 0);
    packet.writeInt32BE(PROTOCOL_VERSION_3_0 + minorVersion, 4);
    body.copy(packet, 8);
    return packet;
}
/** Builds a CancelRequest, e.g. to forward a client's cancel to the real backend. */
export function encodeCancelRequest(processId, secretKey) {
    if (secretKey.length < MIN_CANCEL_KEY || secretKey.length > MAX_CANCEL_KEY) {
        throw new RangeError(`cancel key must be ${MIN_CANCEL_KEY} to ${MAX_CANCEL_KEY} bytes`);
    }
    const packet = Buffer.alloc(12 + secretKey.length);
    packet.writeInt32BE(packet.length, 0);
    packet.writeInt32BE(CANCEL_REQUEST_CODE, 4);
    packet.writeInt32BE(processId | 0, 8);
    secretKey.copy(packet, 12);
    return packet;
}
//# sourceMappingURL=startup.js.map