import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLongArray;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The load generator of scripts/bench_serve.py's latency runs: the Java Kafka producer, because kafka-python cannot
 * offer the goal's rate on a 2-core machine next to the daemon it measures.
 *
 * <p>Args: BOOTSTRAP TOPIC PLAN OUT RATE DURATION_S WARMUP_TOPIC. PLAN has one line per record, in send order:
 * {@code key \t values-json \t wanted (0|1)}. The value sent is {@code {"ts": <wall time at send>, "values": ...}}.
 * First sends the whole plan once to WARMUP_TOPIC, as fast as it can, so that the JVM has compiled its hot paths
 * before the measured run (a cold JVM spends its first second compiling, on the cores the daemon needs).
 * Prints "ready" once connected and warm, waits for a line on stdin, sends at RATE records/s for at most DURATION_S (back to
 * back when it falls behind), then writes OUT: one line per record sent, {@code ts \t append-ms} (the broker's append
 * time from the produce ack, for wanted records; -1 otherwise), and prints "done".
 */
public final class PacedProducer {
    private PacedProducer() {}

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        List<String> plan = Files.readAllLines(Path.of(args[2]), StandardCharsets.UTF_8);
        Path out = Path.of(args[3]);
        double rate = Double.parseDouble(args[4]);
        double durationS = Double.parseDouble(args[5]);
        String warmupTopic = args[6];
        int n = plan.size();
        byte[][] keys = new byte[n][];
        String[] values = new String[n];
        boolean[] wanted = new boolean[n];
        for (int i = 0; i < n; i++) {
            String[] parts = plan.get(i).split("\t", 3);
            keys[i] = parts[0].getBytes(StandardCharsets.UTF_8);
            values[i] = parts[1];
            wanted[i] = parts[2].equals("1");
        }
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.ACKS_CONFIG, "1");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, String.valueOf(64 * 1024));
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "false");
        double[] ts = new double[n];
        AtomicLongArray appendMs = new AtomicLongArray(n);
        int sent = 0;
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            producer.partitionsFor(topic); // connected, metadata fetched: sending starts without delay
            for (int i = 0; i < n; i++) {
                Instant now = Instant.now();
                double t = now.getEpochSecond() + now.getNano() / 1e9;
                byte[] value = ("{\"ts\": " + t + ", \"values\": " + values[i] + "}").getBytes(StandardCharsets.UTF_8);
                producer.send(new ProducerRecord<>(warmupTopic, keys[i], value), wanted[i] ? (md, e) -> { } : null);
            }
            producer.flush();
            Thread.sleep(1000); // let the compiler threads finish
            System.out.println("ready");
            System.out.flush();
            new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)).readLine();
            long start = System.nanoTime();
            while (sent < n) {
                double elapsed = (System.nanoTime() - start) / 1e9;
                if (elapsed >= durationS) {
                    break;
                }
                int due = (int) Math.min(n, Math.min((long) (elapsed * rate) + 1, sent + 500L));
                if (due <= sent) {
                    Thread.sleep(0, 500_000);
                    continue;
                }
                for (int i = sent; i < due; i++) {
                    Instant now = Instant.now();
                    double t = now.getEpochSecond() + now.getNano() / 1e9;
                    ts[i] = t;
                    appendMs.set(i, -1);
                    byte[] value = ("{\"ts\": " + t + ", \"values\": " + values[i] + "}")
                            .getBytes(StandardCharsets.UTF_8);
                    final int index = i;
                    producer.send(new ProducerRecord<>(topic, keys[i], value), wanted[i]
                            ? (metadata, error) -> {
                                if (error == null) {
                                    appendMs.set(index, metadata.timestamp());
                                }
                            }
                            : null);
                }
                sent = due;
            }
            producer.flush();
        }
        try (PrintWriter writer = new PrintWriter(Files.newBufferedWriter(out, StandardCharsets.UTF_8))) {
            for (int i = 0; i < sent; i++) {
                writer.println(ts[i] + "\t" + appendMs.get(i));
            }
        }
        System.out.println("done " + sent);
        System.out.flush();
    }
}
