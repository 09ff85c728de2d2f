/**
 * The one internal shape every bootstrap response family (Clients v0.20, Profiles v0.30, legacy
 * Things/mainflux) is mapped onto. Everything after the bootstrap client works with this only.
 */
export type ResponseFamily = 'clients' | 'profiles' | 'things' | 'mainflux';

export interface DeviceChannel {
  id: string;
  name?: string;
  metadata?: Record<string, unknown> | null;
}

export interface CertificateSet {
  /** PEM text (normalised from PEM or base64 DER by the storage layer). */
  clientCert?: string;
  clientKey?: string;
  caCert?: string;
}

export interface DeviceConfig {
  family: ResponseFamily;
  /** v0.30 bootstrap enrollment ID (not the MQTT username). */
  enrollmentId?: string;
  mqtt: {
    url: string;
    /** MQTT username = the Magistrala client ID. */
    username: string;
    /** MQTT password = the client secret. A secret: never logged. */
    password: string;
  };
  domainId?: string;
  channels: DeviceChannel[];
  /** The operator's content string exactly as received; absent when the server omitted it. */
  content?: string;
  certs: CertificateSet;
}
